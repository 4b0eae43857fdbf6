"""Block-selection scores: the Triton kernels against the reference oracles, the antidiagonal
definition checked by hand and by plain Python loops, and the block-selection rules against
brute force."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import api, reference
from kernels.layout import Layout, causal_block_mask, num_blocks
from kernels.triton import block_scores

TOLERANCE = 1e-5


# ---------------------------------------------------------------------------- helpers
def random_qk(
    seed: int,
    shape: tuple[int, int, int, int, int, int],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``q [batch, heads, q_len, d]`` and ``k [batch, kv_heads, kv_len, d]`` for
    ``shape = (batch, heads, kv_heads, q_len, kv_len, d_head)``."""
    batch, heads, kv_heads, q_len, kv_len, d_head = shape
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d_head, generator=generator)
    k = torch.randn(batch, kv_heads, kv_len, d_head, generator=generator)
    return q.to(device, dtype), k.to(device, dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error over the finite entries; the -inf patterns must agree."""
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    assert torch.isfinite(actual[finite]).all()
    difference = (actual[finite] - expected[finite]).double().norm()
    return (difference / expected[finite].double().norm().clamp(min=1e-30)).item()


# (batch, heads, kv_heads, q_len, kv_len, d_head), block, stride, causal, dtype
ANTIDIAGONAL_CASES = [
    ((1, 2, 2, 256, 256, 64), 64, 8, False, torch.float32),
    ((1, 2, 2, 256, 256, 64), 64, 8, True, torch.float16),
    ((2, 4, 2, 200, 328, 32), 32, 4, True, torch.float32),  # q_len != kv_len, GQA, partial blocks
    ((1, 4, 1, 328, 200, 48), 32, 16, True, torch.float16),  # q_len > kv_len: empty rows
    ((1, 2, 1, 300, 500, 32), 128, 4, False, torch.float32),
    ((1, 2, 2, 500, 300, 64), 128, 16, True, torch.float32),
    ((1, 1, 1, 100, 130, 16), 48, 3, True, torch.float32),  # stride not a power of two
]


@pytest.mark.parametrize(("shape", "block", "stride", "causal", "dtype"), ANTIDIAGONAL_CASES)
def test_antidiagonal_matches_reference(shape, block, stride, causal, dtype) -> None:
    q, k = random_qk(1, shape, dtype)
    expected = reference.antidiagonal_block_scores(q, k, block=block, stride=stride, causal=causal)
    actual = block_scores.antidiagonal_block_scores(q, k, block=block, stride=stride, causal=causal)
    assert relative_error(actual, expected) < TOLERANCE


# (batch, heads, kv_heads, q_len, kv_len, d_head), block_q, block_k, causal, dtype
MEAN_POOLED_CASES = [
    ((1, 2, 2, 256, 256, 64), 64, 64, False, torch.float32),
    ((2, 4, 2, 200, 328, 32), 32, 64, True, torch.float16),
    ((1, 4, 1, 328, 200, 40), 64, 16, True, torch.float32),
    ((1, 2, 1, 512, 512, 64), 128, 32, False, torch.float16),
]


@pytest.mark.parametrize(("shape", "block_q", "block_k", "causal", "dtype"), MEAN_POOLED_CASES)
def test_mean_pooled_matches_reference(shape, block_q, block_k, causal, dtype) -> None:
    q, k = random_qk(2, shape, dtype)
    arguments = dict(block_q=block_q, block_k=block_k, causal=causal)
    expected = reference.mean_pooled_block_scores(q, k, **arguments)
    actual = block_scores.mean_pooled_block_scores(q, k, **arguments)
    assert relative_error(actual, expected) < TOLERANCE


def test_mean_pool_averages_real_rows_of_partial_blocks() -> None:
    x = torch.arange(2 * 3 * 10 * 5, dtype=torch.float32).reshape(2, 3, 10, 5)
    pooled = block_scores.mean_pool(x.to(torch.float16), 4)
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 3, 3, 5)
    torch.testing.assert_close(pooled[:, :, 2], x[:, :, 8:10].mean(2))
    torch.testing.assert_close(pooled, reference.mean_pool(x, 4))


def test_non_contiguous_inputs() -> None:
    """Models keep q and k as ``[batch, len, heads, d]``; the kernels read them through strides."""
    q, k = random_qk(11, (2, 4, 2, 150, 180, 32))
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous() and not k_view.is_contiguous()
    for function, arguments in [
        (block_scores.antidiagonal_block_scores, dict(block=32, stride=8, causal=True)),
        (block_scores.mean_pooled_block_scores, dict(block_q=32, block_k=16, causal=True)),
    ]:
        torch.testing.assert_close(
            function(q_view, k_view, **arguments), function(q, k, **arguments)
        )


@pytest.mark.parametrize("method", ["mean_pooled", "antidiagonal"])
def test_api_triton_matches_reference(method) -> None:
    q, k = random_qk(3, (1, 2, 1, 160, 224, 32))
    arguments = dict(method=method, block_q=32, block_k=32, stride=8, causal=True)
    expected = api.block_scores(q, k, impl="reference", **arguments)
    actual = api.block_scores(q, k, impl="triton", **arguments)
    assert relative_error(actual, expected) < TOLERANCE


def test_invalid_arguments_raise() -> None:
    q, k = random_qk(4, (1, 2, 1, 64, 64, 16))
    with pytest.raises(ValueError, match="power of two"):
        block_scores.antidiagonal_block_scores(q, k, block=64, stride=5)
    with pytest.raises(ValueError, match="power of two"):
        block_scores.antidiagonal_block_scores(q, k, block=48, stride=2)
    with pytest.raises(ValueError, match="dtype"):
        block_scores.mean_pooled_block_scores(q, k.half(), block_q=16, block_k=16)
    with pytest.raises(ValueError, match="multiple"):
        block_scores.mean_pooled_block_scores(
            q[:, :1], k.expand(1, 2, 64, 16), block_q=16, block_k=16
        )


# ---------------------------------------------------------------------------- definition by hand
def test_antidiagonal_pairs_by_hand() -> None:
    """S = 2, d = 1, block = S (one strided tile per block, so the scores are the softmax itself):
    ``R[m, n] = q[2m+1] k[2n] + q[2m] k[2n+1]``."""
    q = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 4, 1)
    k = torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(1, 1, 4, 1)
    strided = torch.tensor(
        [[2 * 1 + 1 * 10, 2 * 100 + 1 * 1000], [4 * 1 + 3 * 10, 4 * 100 + 3 * 1000]]
    )
    scale = 2e-3  # logits R * scale / S = R / 1000
    expected = torch.softmax(strided / 1000.0, dim=-1).view(1, 1, 2, 2)
    causal_expected = torch.tensor([[1.0, 0.0], expected[0, 0, 1].tolist()]).view(1, 1, 2, 2)
    for function in (reference.antidiagonal_block_scores, block_scores.antidiagonal_block_scores):
        plain = function(q, k, block=2, stride=2, scale=scale)
        causal = function(q, k, block=2, stride=2, scale=scale, causal=True)
        torch.testing.assert_close(plain, expected)
        torch.testing.assert_close(causal, causal_expected)


def antidiagonal_by_loops(
    q: list[list[float]],
    k: list[list[float]],
    *,
    block: int,
    stride: int,
    scale: float,
    causal: bool,
) -> list[list[float]]:
    """One head's XAttention scores in plain Python: ``q [q_len][d]``, ``k [kv_len][d]`` ->
    ``[n_q_blocks][n_kv_blocks]``. Rows past the sequence ends are zeros; every strided query row
    of the zero-padded length takes part (as in the reference); key tiles with no real key and,
    with ``causal``, tiles with ``n > m + (kv_len - q_len) // S`` are left out of the softmax."""
    q_len, kv_len, d_head = len(q), len(k), len(q[0])
    per_block = block // stride

    def row(x: list[list[float]], i: int) -> list[float]:
        return x[i] if i < len(x) else [0.0] * d_head

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    scores = [[0.0] * num_blocks(kv_len, block) for _ in range(num_blocks(q_len, block))]
    for m in range(num_blocks(q_len, block) * per_block):
        logits = {}
        for n in range(math.ceil(kv_len / stride)):
            if causal and n > m + (kv_len - q_len) // stride:
                continue
            antidiagonal = (
                dot(row(q, m * stride + stride - 1 - t), row(k, n * stride + t))
                for t in range(stride)
            )
            logits[n] = sum(antidiagonal) * scale / stride
        if not logits:
            continue
        top = max(logits.values())
        normaliser = sum(math.exp(value - top) for value in logits.values())
        for n, value in logits.items():
            scores[m // per_block][n // per_block] += math.exp(value - top) / normaliser
    return scores


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("q_len", "kv_len"), [(7, 10), (12, 7), (16, 16)])
def test_antidiagonal_matches_python_loops(causal, q_len, kv_len) -> None:
    q, k = random_qk(5, (1, 1, 1, q_len, kv_len, 3), torch.float64)
    block, stride, scale = 4, 2, 0.7
    expected = torch.tensor(
        antidiagonal_by_loops(
            q[0, 0].tolist(),
            k[0, 0].tolist(),
            block=block,
            stride=stride,
            scale=scale,
            causal=causal,
        )
    )
    arguments = dict(block=block, stride=stride, scale=scale, causal=causal)
    torch.testing.assert_close(
        reference.antidiagonal_block_scores(q, k, **arguments)[0, 0], expected.float()
    )
    actual = block_scores.antidiagonal_block_scores(q.float(), k.float(), **arguments)[0, 0]
    torch.testing.assert_close(actual, expected.float())


def test_padding_query_rows_add_no_mass() -> None:
    q, k = random_qk(6, (1, 1, 1, 100, 128, 16))
    # Block row 1 holds strided rows 8..12 with a real query (rows 13..15 are only padding).
    expected = torch.tensor([8.0, 5.0])
    for implementation in (reference, block_scores):
        scores = implementation.antidiagonal_block_scores(q, k, block=64, stride=8)
        torch.testing.assert_close(scores.sum(-1)[0, 0], expected)


# ---------------------------------------------------------------------------- selection rules
def random_block_scores(seed: int, q_len: int, kv_len: int, block: int) -> torch.Tensor:
    """``[2, 3, n_q_blocks, n_kv_blocks]`` random scores (some negative), -inf where the block has
    no causally visible entry."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, num_blocks(q_len, block), num_blocks(kv_len, block))
    scores = torch.randn(shape, generator=generator).exp() - 0.2
    return scores.masked_fill(~causal_block_mask(q_len, kv_len, block, block), float("-inf"))


def top_k_row(row: list[float], k: int) -> set[int]:
    finite = [j for j, value in enumerate(row) if math.isfinite(value)]
    return set(sorted(finite, key=lambda j: -row[j])[:k])


def cumulative_row(row: list[float], tau: float, forced: set[int]) -> set[int]:
    """Forced blocks first, then the others in descending score while the kept mass is below
    ``tau`` x the row total (scores clamped at 0, -inf counting 0); -inf blocks only if forced."""
    values = [max(value, 0.0) if math.isfinite(value) else 0.0 for value in row]
    total = sum(values)
    kept, mass = set(forced), sum(values[j] for j in forced)
    for j in sorted(set(range(len(row))) - forced, key=lambda j: -values[j]):
        if mass >= tau * total:
            break
        kept.add(j)
        mass += values[j]
    return {j for j in kept if math.isfinite(row[j]) or j in forced}


def forced_blocks(i: int, n_rows: int, n_cols: int, keep: bool) -> set[int]:
    return {0, min(max(i + n_cols - n_rows, 0), n_cols - 1)} if keep else set()


def mask_rows(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask.flatten(0, -2)]


@pytest.mark.parametrize(("q_len", "kv_len"), [(256, 256), (200, 420), (420, 200)])
@pytest.mark.parametrize("k", [1, 3, 50])
def test_select_top_k_blocks_brute_force(q_len, kv_len, k) -> None:
    scores = random_block_scores(7, q_len, kv_len, 32)
    expected = [top_k_row(row, k) for row in scores.flatten(0, -2).tolist()]
    assert mask_rows(reference.select_top_k_blocks(scores, k)) == expected


@pytest.mark.parametrize(("q_len", "kv_len"), [(256, 256), (200, 420), (420, 200)])
@pytest.mark.parametrize("tau", [0.3, 0.8, 0.95])
@pytest.mark.parametrize("keep_first_and_diagonal", [True, False])
def test_select_cumulative_blocks_brute_force(q_len, kv_len, tau, keep_first_and_diagonal) -> None:
    scores = random_block_scores(8, q_len, kv_len, 32)
    n_rows, n_cols = scores.shape[-2:]
    expected = [
        cumulative_row(
            row, tau, forced_blocks(index % n_rows, n_rows, n_cols, keep_first_and_diagonal)
        )
        for index, row in enumerate(scores.flatten(0, -2).tolist())
    ]
    mask = reference.select_cumulative_blocks(
        scores, tau, keep_first_and_diagonal=keep_first_and_diagonal
    )
    assert mask_rows(mask) == expected


@pytest.mark.parametrize("method", ["mean_pooled", "antidiagonal"])
def test_selections_make_valid_layouts(method) -> None:
    q_len, kv_len, block = 200, 328, 32
    q, k = random_qk(9, (1, 4, 2, q_len, kv_len, 32))
    scores = api.block_scores(
        q, k, method=method, block_q=block, block_k=block, stride=8, causal=True, impl="triton"
    )
    visible = causal_block_mask(q_len, kv_len, block, block)
    for mask in (
        reference.select_top_k_blocks(scores, 3),
        reference.select_cumulative_blocks(scores, 0.9),
    ):
        layout = Layout.from_block_mask(
            mask, q_len, kv_len, block_q=block, block_k=block, causal=True
        )
        assert torch.equal(layout.block_mask(), mask & visible)
        assert (layout.kv_counts >= 1).all() and 0.0 < layout.block_density() <= 1.0


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or api.interpret_mode(),
    reason="needs a CUDA device and TRITON_INTERPRET unset",
)
@pytest.mark.parametrize("causal", [False, True])
def test_long_bf16_on_gpu(causal) -> None:
    q, k = random_qk(10, (1, 8, 2, 4096, 4096, 128), torch.bfloat16, "cuda")
    for block, stride in [(128, 8), (128, 16), (64, 4)]:
        arguments = dict(block=block, stride=stride, causal=causal)
        expected = reference.antidiagonal_block_scores(q, k, **arguments)
        actual = block_scores.antidiagonal_block_scores(q, k, **arguments)
        assert relative_error(actual, expected) < 1e-4
    for block_q, block_k in [(128, 128), (64, 32)]:
        arguments = dict(block_q=block_q, block_k=block_k, causal=causal)
        expected = reference.mean_pooled_block_scores(q, k, **arguments)
        actual = block_scores.mean_pooled_block_scores(q, k, **arguments)
        assert relative_error(actual, expected) < 1e-4


def test_fp32_inputs_skip_wide_key_tiles_where_the_blocks_allow():
    def widths(dtype: torch.dtype, per_block: int) -> set[int]:
        args = {"q_ptr": torch.empty(0, dtype=dtype), "PER_BLOCK": per_block}
        kept = block_scores._prune_configs(block_scores._GPU_CONFIGS, args)
        return {config.kwargs["BLOCK_N"] for config in kept}

    assert widths(torch.float32, 8) == {block_scores.FP32_MAX_BLOCK_N}
    assert widths(torch.bfloat16, 8) == {64, 128}
    assert widths(torch.float32, 128) == {128}  # blocks of 128 strided tiles need them

"""Block-sparse flash attention (Triton forward, backward and custom op) against the float64
reference oracle.

On CPU the kernels run in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``); with
``TRITON_INTERPRET=0`` on a CUDA machine the same tests run on the GPU. Every output buffer the
kernels allocate is poisoned with NaN, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import triton

import workbench.sparse
from kernels import api, reference
from kernels.layout import Layout, num_blocks
from kernels.triton import autograd, block_sparse_attention, variants
from kernels.triton import block_scores as triton_block_scores
from kernels.triton import row_stats as triton_row_stats

DEVICE = "cpu" if api.interpret_mode() else "cuda"
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 or a CUDA device",
)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LSE_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every buffer the kernels allocate with NaN before they run."""
    allocate = block_sparse_attention._empty

    def poisoned(*args, **kwargs) -> torch.Tensor:
        return allocate(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(block_sparse_attention, "_empty", poisoned)


# ---------------------------------------------------------------------------- helpers
def random_qkv(
    seed: int,
    shape: tuple[int, int, int, int, int, int],
    dtype: torch.dtype = torch.float32,
    device: str = DEVICE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``q [batch, heads, q_len, d]``, ``k, v [batch, kv_heads, kv_len, d]`` for
    ``shape = (batch, heads, kv_heads, q_len, kv_len, d_head)``."""
    batch, heads, kv_heads, q_len, kv_len, d_head = shape
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d_head, generator=generator)
    k = torch.randn(batch, kv_heads, kv_len, d_head, generator=generator)
    v = torch.randn(batch, kv_heads, kv_len, d_head, generator=generator)
    return tuple(x.to(device, dtype) for x in (q, k, v))


def random_layout(
    seed: int,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    block_q: int,
    block_k: int,
    causal: bool = False,
    density: float = 0.5,
    device: str = DEVICE,
    **token_fields: torch.Tensor,
) -> Layout:
    """Random block layout whose first query block lists no key block (an empty row) and whose
    last lists every one (a full row)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, num_blocks(q_len, block_q), num_blocks(kv_len, block_k))
    mask = torch.rand(shape, generator=generator) < density
    mask[:, :, 0] = False
    mask[:, :, -1] = True
    return Layout.from_block_mask(
        mask.to(device),
        q_len,
        kv_len,
        block_q=block_q,
        block_k=block_k,
        causal=causal,
        **token_fields,
    )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||``; ``actual`` must be finite everywhere."""
    assert torch.isfinite(actual).all(), "NaN or inf in a kernel output"
    difference = (actual.double() - expected.double()).norm()
    return (difference / expected.double().norm().clamp(min=1e-30)).item()


def check_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    scale: float | None = None,
    *,
    seed: int = 0,
    loads: str = "auto",
    grid: str = "auto",
) -> None:
    """Forward (out, lse) and backward (dq, dk, dv from gradients of both out and lse) through the
    custom op (in the kernel variant ``loads`` / ``grid``) against autograd through the float64
    reference."""
    tolerance = TOLERANCE[q.dtype]
    inputs = [x.detach().requires_grad_() for x in (q, k, v)]
    out, lse = api.sparse_attention(
        *inputs, layout, scale=scale, return_lse=True, impl="triton", loads=loads, grid=grid
    )
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
    grad_lse = torch.randn(lse.shape, generator=generator).to(lse.device)
    torch.autograd.backward([out, finite_part(lse)], [grad_out, grad_lse])

    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    expected_out, expected_lse = reference.attention(
        *exact, layout, scale=scale, compute_dtype=torch.float64
    )
    torch.autograd.backward(
        [expected_out, finite_part(expected_lse)], [grad_out.double(), grad_lse.double()]
    )

    assert out.dtype == q.dtype and out.shape == q.shape
    assert relative_error(out, expected_out) < tolerance
    assert lse.dtype == torch.float32
    assert torch.equal(torch.isneginf(lse), torch.isneginf(expected_lse))
    finite = torch.isfinite(expected_lse)
    assert not torch.isnan(lse).any()
    if finite.any():
        assert (lse[finite] - expected_lse[finite]).abs().max() < LSE_TOLERANCE
    for actual, reference_input in zip(inputs, exact, strict=True):
        assert actual.grad.dtype == q.dtype and actual.grad.shape == actual.shape
        assert relative_error(actual.grad, reference_input.grad) < tolerance


def finite_part(lse: torch.Tensor) -> torch.Tensor:
    """``lse`` with the rows that keep no key (-inf) set to 0, so that a gradient can flow."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def midpoint_thresholds(q: torch.Tensor, k: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """Per-row thresholds halfway between two neighbouring scaled scores (no entry lies near a
    threshold, so rounding cannot flip a decision); a few rows get +inf (keep nothing) and -inf
    (keep everything). ``[batch, heads, q_len]`` float32."""
    scores = reference.scaled_scores(q, k, scale, torch.float64).sort(dim=-1).values
    generator = torch.Generator().manual_seed(seed)
    rank = torch.randint(0, scores.shape[-1] - 1, scores.shape[:3], generator=generator)
    rank = rank.to(scores.device).unsqueeze(-1)
    threshold = (scores.gather(-1, rank) + scores.gather(-1, rank + 1)).squeeze(-1) / 2
    threshold[..., 3] = float("inf")
    threshold[..., 5] = float("-inf")
    return threshold.float()


# ---------------------------------------------------------------------------- forward + backward
# (batch, heads, kv_heads, q_len, kv_len, d_head), block_q, block_k, causal, dtype, shared: one
# layout for every batch element and head (batch and head dims 1)
CASES = [
    pytest.param((2, 2, 2, 128, 120, 64), 32, 32, False, torch.float32, False, id="fp32"),
    pytest.param(
        (1, 2, 2, 100, 100, 32), 32, 64, True, torch.float32, False, id="causal-partial-blocks"
    ),
    pytest.param((1, 2, 1, 40, 150, 64), 16, 32, True, torch.float32, True, id="decode-gqa"),
    pytest.param((1, 2, 2, 96, 50, 32), 32, 16, True, torch.float32, False, id="q-longer-than-kv"),
    pytest.param((1, 2, 2, 200, 460, 64), 64, 128, True, torch.float32, True, id="large-blocks"),
    pytest.param((2, 4, 2, 80, 112, 48), 16, 32, True, torch.float16, False, id="fp16-gqa-d48"),
    pytest.param((1, 2, 2, 64, 100, 128), 64, 32, False, torch.float16, True, id="fp16-d128"),
]


@pytest.mark.parametrize(("shape", "block_q", "block_k", "causal", "dtype", "shared"), CASES)
def test_matches_reference(shape, block_q, block_k, causal, dtype, shared):
    q, k, v = random_qkv(1, shape, dtype)
    batch, heads, _, q_len, kv_len, _ = shape
    layout = random_layout(
        2,
        *((1, 1) if shared else (batch, heads)),
        q_len,
        kv_len,
        block_q=block_q,
        block_k=block_k,
        causal=causal,
    )
    check_attention(q, k, v, layout, scale=0.3)


# Every variant besides the plain one (pointer loads, one program per query tile) on the cases
# above that hold GQA, empty rows (random_layout's first query block), lengths that are no
# multiple of the block, causal and not, fp16 and fp32, a head dim padded to a power of two.
VARIANT_CASES = [
    pytest.param((1, 2, 1, 40, 70, 32), 16, 32, True, torch.float32, True, id="decode-gqa"),
    pytest.param((1, 4, 2, 48, 56, 48), 16, 16, True, torch.float16, False, id="fp16-gqa-d48"),
    pytest.param((1, 2, 2, 50, 40, 32), 32, 16, False, torch.float32, False, id="not-causal"),
]


@pytest.mark.parametrize(
    ("loads", "grid"),
    [("descriptors", "tiles"), ("pointers", "persistent"), ("descriptors", "persistent")],
)
@pytest.mark.parametrize(
    ("shape", "block_q", "block_k", "causal", "dtype", "shared"), VARIANT_CASES
)
def test_variants_match_reference(shape, block_q, block_k, causal, dtype, shared, loads, grid):
    q, k, v = random_qkv(30, shape, dtype)
    batch, heads, _, q_len, kv_len, _ = shape
    layout = random_layout(
        31,
        *((1, 1) if shared else (batch, heads)),
        q_len,
        kv_len,
        block_q=block_q,
        block_k=block_k,
        causal=causal,
    )
    check_attention(q, k, v, layout, scale=0.3, loads=loads, grid=grid)


def test_descriptors_take_a_broadcast_output_gradient():
    """``out.sum()`` hands the backward a stride-0 gradient, which no descriptor can address: the
    descriptor backward copies it and matches the pointer one."""
    q, k, v = random_qkv(32, (1, 2, 2, 32, 32, 16))
    layout = random_layout(33, 1, 2, 32, 32, block_q=16, block_k=16, causal=True)
    grads = {}
    for loads in ("pointers", "descriptors"):
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        api.sparse_attention(*inputs, layout, impl="triton", loads=loads).sum().backward()
        grads[loads] = [x.grad for x in inputs]
    for plain, described in zip(grads["pointers"], grads["descriptors"], strict=True):
        torch.testing.assert_close(described, plain, atol=1e-5, rtol=1e-5)


def test_variant_choice(caplog: pytest.LogCaptureFixture):
    """Forced descriptors refuse strides they cannot take; "auto" takes pointers there (and in
    the interpreter) and says why; the tiled grid (the persistent one only when asked)."""
    q, k, v = random_qkv(34, (1, 2, 2, 32, 32, 16))
    strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # last stride != 1
    layout = random_layout(35, 1, 2, 32, 32, block_q=16, block_k=16)
    with pytest.raises(ValueError, match="loads='descriptors' cannot run"):
        api.sparse_attention(strided, k, v, layout, impl="triton", loads="descriptors")
    with pytest.raises(ValueError, match="loads must be one of"):
        api.sparse_attention(q, k, v, layout, impl="triton", loads="tma")
    with caplog.at_level("DEBUG", logger="kernels.api"):
        variant = variants.choose(strided, k, v, layout)
    assert variant == variants.Variant("pointers", "tiles")
    assert "stride" in caplog.text and "triton" in caplog.text
    assert variants.choose(q, k, v, layout, grid="persistent").grid == "persistent"


def test_auto_takes_descriptors_on_hopper_for_the_forward_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """On compute capability 9.x "auto" loads the forward's tiles through descriptors and the
    backward's through pointers (measured faster there); forced descriptors serve both."""
    monkeypatch.setattr(variants, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(variants, "interpret_mode", lambda: False)
    q, k, v = random_qkv(36, (1, 2, 2, 32, 32, 16))
    layout = random_layout(37, 1, 2, 32, 32, block_q=16, block_k=16)
    assert variants.choose(q, k, v, layout).loads == "descriptors"
    with caplog.at_level("DEBUG", logger="kernels.api"):
        backward = variants.choose(q, k, v, layout, backward=True)
    assert backward.loads == "pointers" and "BACKWARD_DESCRIPTORS" in caplog.text
    assert variants.choose(q, k, v, layout, "descriptors", backward=True).loads == "descriptors"
    monkeypatch.setattr(variants, "_capability", lambda device: (8, 0))
    assert variants.choose(q, k, v, layout).loads == "pointers"


def test_tuned_configurations_are_listed_and_forgotten(monkeypatch: pytest.MonkeyPatch):
    """`tuned_configs` gives each kernel's configuration (the interpreter's single one, which is
    never tuned) and, for autotuners of several, each key's choice; `reset_tuning` forgets the
    choices."""
    single = block_sparse_attention.tuned_configs()
    assert set(single) == {"forward", "dq", "dkdv"}
    assert all(list(choices) == ["single"] for choices in single.values())
    assert all("BLOCK_M: 16" in choices["single"] for choices in single.values())
    tuner = block_sparse_attention._fwd_kernel
    several = [triton.Config({"BLOCK_M": m, "BLOCK_N": 64}) for m in (64, 128)]
    monkeypatch.setattr(tuner, "configs", several)
    monkeypatch.setattr(tuner, "cache", {(128, "torch.bfloat16"): several[1]})
    assert block_sparse_attention.tuned_configs()["forward"] == {
        "(128, 'torch.bfloat16')": str(several[1])
    }
    block_sparse_attention.reset_tuning()
    assert block_sparse_attention.tuned_configs()["forward"] == {}


def test_work_list_puts_the_longest_query_blocks_first():
    counts = torch.tensor([[[1, 3, 0], [2, 3, 1]]], dtype=torch.int32)  # [batch 1, heads 2, 3]
    layout = Layout.trusted(
        kv_indices=torch.zeros(1, 2, 3, 3, dtype=torch.int32),
        kv_counts=counts,
        q_len=48,
        kv_len=48,
        block_q=16,
        block_k=16,
        causal=False,
        token_mask=None,
        row_threshold=None,
    )
    items = variants.work_list(layout, 1, 2)
    assert items.tolist() == [1, 4, 3, 0, 5, 2]  # (head, block) = (0, 1), (1, 1), (1, 0), ...
    assert counts.flatten()[items.long()].tolist() == sorted(counts.flatten().tolist())[::-1]


def test_broadcast_layout_with_token_mask():
    """One layout for every batch element (batch dim 1), a per-head token mask, causal, GQA."""
    q, k, v = random_qkv(3, (2, 4, 2, 72, 72, 32))
    generator = torch.Generator().manual_seed(4)
    token_mask = (torch.rand(1, 4, 72, 72, generator=generator) < 0.6).to(DEVICE)
    layout = random_layout(
        5, 1, 4, 72, 72, block_q=32, block_k=16, causal=True, token_mask=token_mask
    )
    check_attention(q, k, v, layout)


def test_row_threshold():
    """Token-level selection by a per-row score threshold."""
    q, k, v = random_qkv(6, (2, 2, 2, 64, 90, 32))
    threshold = midpoint_thresholds(q, k, 0.25, seed=7)
    layout = random_layout(
        8, 2, 2, 64, 90, block_q=16, block_k=32, density=0.7, row_threshold=threshold
    )
    check_attention(q, k, v, layout, scale=0.25)


def near_tie_qkv(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``q, k, v`` ``[2, 1, 64, 32]`` whose scores hold exact ties (duplicated keys, a zero query
    row) and near-ties (keys scaled by 1 + ~1e-7: scores a few fp32 ulps apart, closer than the
    rounding differences between two summation orders), besides random near misses."""
    q, k, v = random_qkv(seed, (2, 1, 1, 64, 64, 32), torch.float32, "cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    k[:, :, 32:40] = k[:, :, 8:16]  # exact copies
    k[:, :, 40:60] = k[:, :, 12:32] * (1 + 1e-7 * torch.randn(2, 1, 20, 1, generator=generator))
    q[:, :, 50] = 0.0  # every score of this row ties
    return tuple(x.to(DEVICE, dtype) for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", workbench.sparse.names())
def test_selections_made_by_the_methods_run_identically(name: str, dtype: torch.dtype):
    """Each method selects on inputs with ties and near-ties; forward, dQ and dK/dV must keep the
    keys its layout defines (judged on float64 scores, which must give the same set as the
    selection's own fp32 scores), whatever thresholds it produced. A threshold placed exactly at
    the k-th score let rounding keep or drop that key differently in every kernel."""
    q, k, v = near_tie_qkv(21, dtype)
    layout = workbench.sparse.get(name).select(q, k, causal=True, block_size=16)
    fp32 = layout.to_dense(reference.scaled_scores(q, k))
    fp64 = layout.to_dense(reference.scaled_scores(q, k, compute_dtype=torch.float64))
    assert torch.equal(fp32, fp64)
    check_attention(q, k, v, layout)


def selects_by_threshold(name: str) -> bool:
    """The method's layouts carry a ``row_threshold`` (judged on a small CPU input)."""
    q = torch.randn(1, 1, 32, 16, generator=torch.Generator().manual_seed(0))
    layout = workbench.sparse.get(name).select(q, q, causal=True, block_size=16)
    return layout.row_threshold is not None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", [n for n in workbench.sparse.names() if selects_by_threshold(n)])
def test_threshold_selections_survive_recomputed_scores(name: str, seed: int):
    """Thresholds must lie farther from every score than two fp32 computations of it may differ
    (`reference.score_tolerance`): a threshold at a midpoint between near-tied scores still flips
    keys, between the selection's einsum and the kernels' tiles, on some of these seeds."""
    q, k, v = near_tie_qkv(100 + seed, torch.float32)
    check_attention(q, k, v, workbench.sparse.get(name).select(q, k, causal=True, block_size=16))


def test_top_k_keeps_exactly_k_unless_tied():
    """The issue's case (batch 2, one head, 64 tokens, d 32, causal, k 5): every row keeps its
    5 best keys (all visible ones in the first rows), more only with exact or near ties."""
    q, k, _ = near_tie_qkv(21, torch.float32)
    layout = workbench.sparse.get("top_k", k=5).select(q, k, causal=True, block_size=16)
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64).cpu()
    kept = layout.to_dense(scores.to(DEVICE)).cpu()
    visible = reference.attention_mask(64, 64, True, "cpu")
    ordered = scores.masked_fill(~visible, float("-inf")).sort(-1, descending=True).values
    n_visible = visible.sum(-1).expand(2, 1, 64)
    fifth = ordered.gather(-1, (n_visible.clamp(max=5) - 1).unsqueeze(-1))
    exact_top = (scores >= fifth) & visible
    assert (kept & visible).equal(kept)
    assert (kept | exact_top).equal(kept)  # a superset of the exact top-k ...
    extra = kept & ~exact_top
    sixth = ordered.gather(-1, n_visible.clamp(max=5).unsqueeze(-1))
    tolerance = reference.score_tolerance(q, k).cpu().unsqueeze(-1)
    assert (scores[extra] >= (fifth - 2 * tolerance).expand_as(scores)[extra]).all()
    untied = (fifth - sixth > 2 * tolerance).squeeze(-1)
    assert untied.float().mean() > 0.8
    assert (kept.sum(-1)[untied] == n_visible.clamp(max=5)[untied]).all()  # ... equal if untied


def test_non_contiguous_inputs():
    """q, k, v as transposed views of ``[batch, len, heads, d]`` tensors and a strided dO."""
    batch, heads, q_len, kv_len, d_head = 1, 2, 48, 80, 32
    generator = torch.Generator().manual_seed(9)
    q = torch.randn(batch, q_len, heads, d_head, generator=generator).to(DEVICE).transpose(1, 2)
    k = torch.randn(batch, kv_len, heads, d_head, generator=generator).to(DEVICE).transpose(1, 2)
    v = torch.randn(batch, kv_len, heads, d_head, generator=generator).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    layout = random_layout(10, batch, heads, q_len, kv_len, block_q=16, block_k=16, causal=True)
    check_attention(q, k, v, layout)


def test_empty_layout_gives_zeros_and_no_nan():
    q, k, v = random_qkv(11, (1, 2, 2, 40, 40, 16))
    counts = torch.zeros(1, 1, 3, dtype=torch.int32, device=DEVICE)
    indices = torch.zeros(1, 1, 3, 1, dtype=torch.int32, device=DEVICE)
    layout = Layout(indices, counts, q_len=40, kv_len=40, block_q=16, block_k=16)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    out, lse = api.sparse_attention(*inputs, layout, return_lse=True, impl="triton")
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()
    for x in inputs:
        assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------------------- op and API plumbing
def test_a_loss_on_the_logsumexp_alone_matches_autograd_of_the_reference():
    q, k, v = random_qkv(12, (1, 2, 1, 40, 48, 16))
    layout = random_layout(15, 1, 2, 40, 48, block_q=16, block_k=16, causal=True)
    inputs = [x.detach().requires_grad_() for x in (q, k, v)]
    out, lse = autograd.triton_sparse_attention(*inputs, layout, 0.25)
    assert out.requires_grad and lse.requires_grad
    finite_part(lse).square().sum().backward()  # out unused: its gradient is never formed
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    _, expected_lse = reference.attention(*exact, layout, scale=0.25, compute_dtype=torch.float64)
    finite_part(expected_lse).square().sum().backward()
    for actual, expected in zip(inputs[:2], exact[:2], strict=True):
        assert relative_error(actual.grad, expected.grad) < TOLERANCE[q.dtype]
    assert exact[2].grad is None  # v does not enter the logsumexp
    assert torch.equal(inputs[2].grad, torch.zeros_like(v))


def test_a_merge_by_logsumexp_trains_on_the_kernels_as_on_the_reference():
    """dusa merges two branches by their logsumexps: its gradients through the kernels equal
    those through the reference."""
    method = workbench.sparse.get("dusa", block=8)
    q, k, v = random_qkv(16, (1, 2, 1, 40, 40, 16))
    grads = {}
    for impl in ("reference", "triton"):
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        out, _ = method.attend(*inputs, causal=True, block_size=16, impl=impl)
        out.square().sum().backward()
        grads[impl] = [x.grad for x in inputs]
    for triton_grad, reference_grad in zip(grads["triton"], grads["reference"], strict=True):
        assert relative_error(triton_grad, reference_grad) < TOLERANCE[q.dtype]


def test_opcheck():
    q, k, v = random_qkv(13, (1, 2, 1, 24, 40, 16))
    layout = random_layout(14, 1, 2, 24, 40, block_q=16, block_k=16, causal=True, density=0.8)
    fields = (
        layout.kv_indices,
        layout.kv_counts,
        None,
        None,
        16,
        16,
        True,
        0.25,
        "pointers",
        "tiles",
    )
    out, lse = autograd.forward_op(q, k, v, *fields)
    torch.library.opcheck(autograd.forward_op, (q, k, v, *fields))
    grad_out, grad_lse = torch.randn_like(q), torch.randn_like(lse)
    for lse_grad in (None, grad_lse):
        torch.library.opcheck(
            autograd.backward_op, (q, k, v, out, lse, grad_out, lse_grad, *fields)
        )


def test_compiled_forward_and_backward_trace_the_ops():
    q, k, v = random_qkv(17, (1, 2, 1, 40, 40, 16))
    layout = random_layout(18, 1, 2, 40, 40, block_q=16, block_k=16, causal=True, density=0.7)

    def loss(q, k, v):
        return autograd.triton_sparse_attention(q, k, v, layout, 0.25)[0].square().sum()

    eager_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    loss(*eager_inputs).backward()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled(*compiled_inputs).backward()
    for eager, traced in zip(eager_inputs, compiled_inputs, strict=True):
        torch.testing.assert_close(traced.grad, eager.grad)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = random_qkv(15, (1, 1, 1, 16, 16, 16), device="cpu")
    layout = Layout.dense(16, 16, block_q=16, block_k=16)
    with pytest.raises(RuntimeError, match="impl='triton'"):
        api.sparse_attention(q, k, v, layout, impl="triton")


@pytest.mark.parametrize("scale", [0.0, -0.25, float("inf"), float("nan")])
def test_api_rejects_a_scale_that_is_not_positive_and_finite(scale: float):
    q, k, v = random_qkv(16, (1, 1, 1, 16, 16, 16), device="cpu")
    layout = Layout.dense(16, 16, block_q=16, block_k=16)
    calls = [
        lambda: api.sparse_attention(q, k, v, layout, scale=scale, impl="reference"),
        lambda: api.row_stats(q, k, scale=scale, impl="reference"),
        lambda: api.block_scores(q, k, scale=scale, block_q=16, block_k=16, impl="reference"),
        lambda: triton_row_stats.row_stats(q, k, scale=scale),  # the Triton entry points too
        lambda: triton_block_scores.mean_pooled_block_scores(
            q, k, block_q=16, block_k=16, scale=scale
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            call()


def test_importing_the_api_does_not_import_triton():
    code = "import sys, kernels.api; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or api.interpret_mode(),
    reason="needs a CUDA device and TRITON_INTERPRET=0",
)
class TestOnGPU:
    @pytest.mark.parametrize(("block_q", "block_k", "causal"), [(64, 64, True), (128, 64, False)])
    def test_bf16_long(self, block_q, block_k, causal):
        shape = (1, 4, 2, 1024, 1024, 128)
        q, k, v = random_qkv(20, shape, torch.bfloat16, "cuda")
        layout = random_layout(
            21,
            1,
            4,
            1024,
            1024,
            block_q=block_q,
            block_k=block_k,
            causal=causal,
            density=0.4,
            device="cuda",
        )
        check_attention(q, k, v, layout)

    def test_bf16_token_fields(self):
        q, k, v = random_qkv(22, (2, 2, 2, 512, 1024, 64), torch.bfloat16, "cuda")
        threshold = midpoint_thresholds(q, k, 0.125, seed=23)
        layout = random_layout(
            24,
            2,
            2,
            512,
            1024,
            block_q=128,
            block_k=128,
            causal=True,
            density=0.6,
            device="cuda",
            row_threshold=threshold,
        )
        check_attention(q, k, v, layout)


def test_fp32_inputs_are_autotuned_over_small_tiles_only():
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in block_sparse_attention._FWD_CONFIGS
    ]

    def tiles(dtype: torch.dtype, block: int) -> set[tuple[int, int]]:
        args = {"Q": torch.empty(0, dtype=dtype), "BLOCK_Q": block, "BLOCK_K": block}
        kept = block_sparse_attention._fitting(configs, args)
        return {(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]) for config in kept}

    assert (
        max(max(tile) for tile in tiles(torch.float32, 128)) == block_sparse_attention.FP32_MAX_TILE
    )
    assert max(max(tile) for tile in tiles(torch.bfloat16, 128)) == 128
    assert tiles(torch.float32, 16) == tiles(torch.float16, 16) == {(16, 16)}

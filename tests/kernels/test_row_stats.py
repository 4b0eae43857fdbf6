"""Streaming row statistics (`kernels.triton.row_stats`) against the float64 oracle
`kernels.reference.row_stats`.

On CPU the kernels run in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``); with
``TRITON_INTERPRET=0`` on a CUDA machine the same tests run on the GPU. Every buffer the kernels
allocate is poisoned first, so an element a kernel forgets to write fails the test. Top-p budgets
must equal the oracle's exactly (random scores have distinct probabilities).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import api, reference
from kernels.layout import Layout, num_blocks
from kernels.reference import RowStats
from kernels.triton import common
from kernels.triton import row_stats as triton_row_stats

DEVICE = "cpu" if api.interpret_mode() else "cuda"
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 or a CUDA device",
)
TOLERANCE = 2e-5
"""fp16 inputs give exact products, so fp16 and fp32 scores agree with the oracle to fp32
rounding."""
ALL_PS = (0.5, 0.9, 0.95, 0.99)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every buffer the kernels allocate with NaN (floats) or a bogus value (integers)."""
    allocate = triton_row_stats._empty

    def poisoned(*args, **kwargs) -> torch.Tensor:
        buffer = allocate(*args, **kwargs)
        return buffer.fill_(float("nan") if buffer.is_floating_point() else -77)

    monkeypatch.setattr(triton_row_stats, "_empty", poisoned)


# ---------------------------------------------------------------------------- helpers
def random_qk(
    seed: int,
    batch: int,
    heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: int,
    d_head: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``q [batch, heads, q_len, d]`` and ``k [batch, kv_heads, kv_len, d]``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d_head, generator=generator)
    k = torch.randn(batch, kv_heads, kv_len, d_head, generator=generator)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


def random_block_mask(
    seed: int,
    shape: tuple[int, int],
    q_len: int,
    kv_len: int,
    block_q: int,
    block_k: int,
    density: float = 0.4,
) -> torch.Tensor:
    """``[*shape, n_q_blocks, n_kv_blocks]`` bool with about ``density`` of the blocks set."""
    generator = torch.Generator().manual_seed(seed)
    size = (*shape, num_blocks(q_len, block_q), num_blocks(kv_len, block_k))
    return (torch.rand(size, generator=generator) < density).to(DEVICE)


def oracle(q: torch.Tensor, k: torch.Tensor, **kwargs) -> RowStats:
    return reference.row_stats(q, k, compute_dtype=torch.float64, **kwargs)


def assert_matches(out: RowStats, ref: RowStats) -> None:
    """Every field of ``out`` equals the oracle's: floats to fp32 rounding, budgets exactly."""
    assert out.ps == ref.ps
    for name in ("lse", "max_score", "entropy", "selection_mass", "relevant_mass"):
        got, want = getattr(out, name), getattr(ref, name)
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        assert not got.isnan().any(), name
        torch.testing.assert_close(
            got,
            want.to(got.device),
            atol=TOLERANCE,
            rtol=TOLERANCE,
            msg=lambda text, name=name: f"{name}: {text}",
        )
    budget, want = out.top_p_budget, ref.top_p_budget.to(out.top_p_budget.device)
    assert budget.dtype == torch.int32 and budget.shape == want.shape
    wrong = (budget != want).nonzero()
    assert wrong.numel() == 0, (
        f"{len(wrong)} budgets differ, first at {wrong[0].tolist()}: "
        f"{budget[tuple(wrong[0])].item()} != {want[tuple(wrong[0])].item()}"
    )


def run_both(q: torch.Tensor, k: torch.Tensor, **kwargs) -> tuple[RowStats, RowStats]:
    return triton_row_stats.row_stats(q, k, **kwargs), oracle(q, k, **kwargs)


# ---------------------------------------------------------------------------- dense statistics
# (batch, heads, kv_heads, q_len, kv_len, d_head, dtype, causal, scale)
CASES = {
    "fp32": (1, 2, 2, 96, 96, 32, torch.float32, False, None),
    "fp16-causal-gqa": (2, 4, 2, 130, 130, 64, torch.float16, True, None),
    "fp32-causal-decode": (1, 2, 1, 40, 200, 64, torch.float32, True, None),
    "fp16-causal-empty-rows-d48": (1, 2, 2, 150, 100, 48, torch.float16, True, None),
    "fp16-d128-q<kv": (1, 2, 1, 64, 256, 128, torch.float16, False, None),
    "fp32-peaked": (1, 2, 2, 64, 160, 32, torch.float32, False, 1.5),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case: tuple) -> None:
    batch, heads, kv_heads, q_len, kv_len, d_head, dtype, causal, scale = case
    q, k = random_qk(
        len(CASES) + q_len + kv_len, batch, heads, kv_heads, q_len, kv_len, d_head, dtype
    )
    out, ref = run_both(q, k, scale=scale, causal=causal, ps=(*ALL_PS, 1.0))
    assert_matches(out, ref)
    if causal and q_len > kv_len:  # rows before the first key: empty
        empty = slice(0, q_len - kv_len)
        assert torch.isneginf(out.lse[:, :, empty]).all()
        assert (out.top_p_budget[:, :, empty] == 0).all()


def test_strided_inputs() -> None:
    """Inputs addressed through their strides: ``[batch, len, heads, d]`` transposed views."""
    q, k = random_qk(3, 1, 2, 2, 48, 80, 32)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2)
    out = triton_row_stats.row_stats(q_view, k_view, causal=True, ps=(0.9,))
    assert_matches(out, oracle(q, k, causal=True, ps=(0.9,)))


def test_no_masses_skips_the_budgets() -> None:
    """``ps=()``: no budgets (last dimension 0), every other statistic unchanged."""
    q, k = random_qk(5, 1, 2, 1, 40, 70, 32)
    positions = torch.randint(-1, 70, (1, 40, 3), generator=torch.Generator().manual_seed(6))
    kwargs = dict(causal=True, relevant_positions=positions.to(DEVICE))
    out, ref = run_both(q, k, ps=(), **kwargs)
    assert_matches(out, ref)
    assert out.top_p_budget.shape == (1, 2, 40, 0) and out.ps == ()
    with_budgets = triton_row_stats.row_stats(q, k, ps=(0.9,), **kwargs)
    for name in ("lse", "max_score", "entropy", "relevant_mass"):
        assert torch.equal(getattr(out, name), getattr(with_budgets, name)), name


# ---------------------------------------------------------------------------- selection mass
def test_selection_block_mask_broadcast() -> None:
    """A block layout shared by the batch (batch dim 1), blocks unlike the kernel tiles."""
    batch, heads, q_len, kv_len = 2, 2, 100, 140
    q, k = random_qk(11, batch, heads, 1, q_len, kv_len, 32)
    blocks = random_block_mask(12, (1, heads), q_len, kv_len, 32, 16)
    selection = Layout.from_block_mask(blocks, q_len, kv_len, block_q=32, block_k=16)
    assert_matches(*run_both(q, k, ps=(0.9,), selection=selection))


def test_selection_causal_token_mask() -> None:
    """A causal selection with a token mask, both shared by the batch, under causal attention
    with q_len < kv_len."""
    batch, heads, q_len, kv_len = 2, 2, 80, 120
    q, k = random_qk(21, batch, heads, 2, q_len, kv_len, 64, torch.float16)
    blocks = random_block_mask(22, (1, heads), q_len, kv_len, 16, 32, density=0.6)
    generator = torch.Generator().manual_seed(23)
    token_mask = (torch.rand(1, heads, q_len, kv_len, generator=generator) < 0.7).to(DEVICE)
    selection = Layout.from_block_mask(
        blocks, q_len, kv_len, block_q=16, block_k=32, causal=True, token_mask=token_mask
    )
    assert_matches(*run_both(q, k, causal=True, ps=(0.5,), selection=selection))


def test_selection_row_threshold() -> None:
    """A token-level row threshold (midway between two scores, so rounding cannot flip a key)
    inside a random block mask; non-causal selection under causal attention."""
    batch, heads, q_len, kv_len = 1, 2, 64, 96
    q, k = random_qk(31, batch, heads, 2, q_len, kv_len, 32)
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64)
    ordered = scores.sort(dim=-1, descending=True).values
    rank = torch.randint(
        0, kv_len // 2, (batch, heads, q_len, 1), generator=torch.Generator().manual_seed(32)
    ).to(DEVICE)
    threshold = (ordered.gather(-1, rank) + ordered.gather(-1, rank + 1)).squeeze(-1) / 2
    blocks = random_block_mask(33, (batch, heads), q_len, kv_len, 16, 16, density=0.7)
    selection = dataclasses.replace(
        Layout.from_block_mask(blocks, q_len, kv_len, block_q=16, block_k=16),
        row_threshold=threshold.to(torch.float32),
    )
    assert_matches(*run_both(q, k, causal=True, ps=(0.95,), selection=selection))


# ---------------------------------------------------------------------------- relevant mass
@pytest.mark.parametrize("per_head", [False, True], ids=["batch-q-R", "batch-heads-q-R"])
def test_relevant_positions(per_head: bool) -> None:
    """-1 padding, duplicates and (causal) invisible future positions."""
    batch, heads, q_len, kv_len, n_relevant = 2, 4, 50, 70, 5
    q, k = random_qk(41, batch, heads, 2, q_len, kv_len, 32)
    generator = torch.Generator().manual_seed(42)
    shape = (batch, heads, q_len, n_relevant) if per_head else (batch, q_len, n_relevant)
    positions = torch.randint(-1, kv_len, shape, generator=generator)
    positions[..., -1] = positions[..., 0]  # a duplicate counts twice
    positions[..., 1] = -1
    positions = positions.to(DEVICE)
    assert_matches(*run_both(q, k, causal=True, ps=(0.5,), relevant_positions=positions))


# ---------------------------------------------------------------------------- hand-made rows
def test_uniform_rows_need_ceil_p_n() -> None:
    """All scores equal (q = 0): a row of n visible keys needs ceil(p n) of them."""
    ps = (0.5, 0.9, 0.123, 0.99, 1.0)
    q_len, kv_len = 64, 100
    _, k = random_qk(51, 1, 1, 1, q_len, kv_len, 16)
    q = torch.zeros(1, 1, q_len, 16, device=DEVICE)
    for causal in (False, True):
        out, ref = run_both(q, k, causal=causal, ps=ps)
        assert_matches(out, ref)
        n_keys = (
            torch.arange(q_len) + (kv_len - q_len) + 1 if causal else torch.full((q_len,), kv_len)
        )
        expected = torch.tensor(
            [[math.ceil(p * n * (1 - 1e-9)) for p in ps] for n in n_keys.tolist()],
            dtype=torch.int32,
        )
        assert torch.equal(out.top_p_budget[0, 0].cpu(), expected)
        torch.testing.assert_close(out.entropy[0, 0].cpu(), n_keys.double().log().float())


def test_one_hot_rows_need_one_key() -> None:
    """One key far above the others: every budget (p = 1 included) is 1, entropy ~0."""
    q_len, kv_len, d_head = 32, 90, 32
    _, k = random_qk(61, 1, 2, 2, q_len, kv_len, d_head)
    target = torch.randint(0, kv_len, (2, q_len), generator=torch.Generator().manual_seed(62))
    q = 40.0 * k[0, torch.arange(2)[:, None], target.to(DEVICE)].unsqueeze(0)
    out, ref = run_both(q, k, ps=(0.5, 0.99, 1.0))
    assert_matches(out, ref)
    assert (out.top_p_budget == 1).all()
    assert out.entropy.abs().max() < 1e-6


def test_search_passes_visit_only_unsettled_entries(caplog: pytest.LogCaptureFixture) -> None:
    """Rows settled by the bracket pass (one-hot) interleaved, in every head, with near-uniform
    rows that need several search passes: the passes, run on the unsettled (row, p) entries only,
    must leave the settled ones and finish the others exactly."""
    q_len, kv_len, d_head = 48, 400, 16
    q, k = random_qk(57, 1, 2, 1, q_len, kv_len, d_head)
    target = torch.randint(0, kv_len, (q_len,), generator=torch.Generator().manual_seed(58))
    one_hot = 60.0 * k[0, 0, target.to(DEVICE)] / k[0, 0, target.to(DEVICE)].norm(dim=-1)[:, None]
    q = 0.5 * q
    q[0, 0, ::2], q[0, 1, 1::2] = one_hot[::2], one_hot[1::2]
    with caplog.at_level("DEBUG", logger=triton_row_stats.__name__):
        out, ref = run_both(q, k, ps=ALL_PS)
    assert_matches(out, ref)
    (record,) = [r for r in caplog.records if r.msg.startswith("top-p search")]
    assert record.args[0] >= 2
    peaked = torch.cat([out.top_p_budget[0, 0, ::2, 0], out.top_p_budget[0, 1, 1::2, 0]])
    assert (peaked == 1).all()


def test_first_search_pass_takes_exactly_the_open_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact budgets: the first search pass after the bracket pass receives, per head, the
    (row, p) entries whose bracket interval is open, in increasing order, as ``row * len(ps) + p``
    (padding past them), and the search settles them on the oracle's budgets."""
    q, k = random_qk(61, 1, 2, 1, 40, 300, 16)
    bracket = triton_row_stats.row_stats(q, k, causal=True, ps=ALL_PS, budgets="bracket")
    is_open = (bracket.top_p_budget_low != bracket.top_p_budget_high)[0].flatten(1)  # [heads, .]
    assert is_open.any(1).all()
    launches = []
    search = triton_row_stats._search_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(args[8].clone())  # Entries
                return search[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(triton_row_stats, "_search_kernel", Spy())
    out, ref = run_both(q, k, causal=True, ps=ALL_PS)
    assert torch.equal(out.top_p_budget, ref.top_p_budget.to(q.device))
    first = launches[0].cpu()
    for head, wanted in enumerate(is_open.cpu()):
        listed = first[head][first[head] < wanted.numel()]
        assert torch.equal(listed, torch.nonzero(wanted).flatten().to(torch.int32))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    q_len=st.integers(1, 40),
    kv_len=st.integers(1, 70),
    scale=st.floats(0.05, 3.0),
    ps=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5, unique=True),
    causal=st.booleans(),
)
def test_budgets_monotone_in_p(
    seed: int, q_len: int, kv_len: int, scale: float, ps: list[float], causal: bool
) -> None:
    q, k = random_qk(seed, 1, 1, 1, q_len, kv_len, 16)
    ps = tuple(sorted(ps))
    out = triton_row_stats.row_stats(q, k, scale=scale, causal=causal, ps=ps)
    budgets = out.top_p_budget.long()
    assert (budgets[..., 1:] >= budgets[..., :-1]).all()
    n_keys = reference.attention_mask(q_len, kv_len, causal, q.device).sum(-1)
    assert (budgets <= n_keys[:, None]).all()
    assert ((budgets >= 1) == (n_keys > 0)[:, None]).all()


# ---------------------------------------------------------------------------- bracket mode
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    q_len=st.integers(1, 48),
    kv_len=st.integers(1, 160),
    scale=st.floats(0.05, 3.0),
    causal=st.booleans(),
)
def test_bracket_interval_holds_the_exact_budget(
    seed: int, q_len: int, kv_len: int, scale: float, causal: bool
) -> None:
    """Bracket mode: ``low <= exact <= high`` for every (row, p), the estimate between them, the
    other statistics unchanged; with ``budget_rtol=0`` every interval closes on the exact budget."""
    q, k = random_qk(seed, 1, 2, 1, q_len, kv_len, 16)
    kwargs = dict(scale=scale, causal=causal, ps=ALL_PS)
    exact = oracle(q, k, **kwargs).top_p_budget.to(q.device)
    out = triton_row_stats.row_stats(q, k, budgets="bracket", **kwargs)
    low, high, estimate = out.top_p_budget_low, out.top_p_budget_high, out.top_p_budget
    assert low.dtype == high.dtype == estimate.dtype == torch.int32
    assert ((low <= exact) & (exact <= high)).all()
    assert ((low <= estimate) & (estimate <= high)).all()
    refined = triton_row_stats.row_stats(q, k, budgets="bracket", budget_rtol=0.0, **kwargs)
    for budgets in (refined.top_p_budget, refined.top_p_budget_low, refined.top_p_budget_high):
        assert torch.equal(budgets, exact)


@triton.jit
def _count_ones_kernel(Ones, Out, N: tl.constexpr, M: tl.constexpr):
    rows, cols = tl.arange(0, M), tl.arange(0, N)
    ones = tl.load(Ones + rows[:, None] * N + cols[None, :])
    tl.store(Out + rows, triton_row_stats._count_ones(ones))


@pytest.mark.parametrize("n", [16, 256])
def test_count_ones_decodes_the_wrapped_bit_sum(n: int) -> None:
    """The bracket pass's counts (`_count_ones`): every count 0..n, where the integer sum of the
    bit patterns of 1.0 wraps around int32 many times."""
    generator = torch.Generator().manual_seed(n)
    counts = torch.arange(n + 1)
    ones = (torch.rand(n + 1, n, generator=generator).argsort(1) < counts[:, None]).float()
    rows = triton.next_power_of_2(n + 1)
    padded = torch.cat([ones, torch.zeros(rows - n - 1, n)]).to(DEVICE)
    out = torch.empty(rows, dtype=torch.int32, device=DEVICE)
    _count_ones_kernel[(1,)](padded, out, N=n, M=rows)
    assert torch.equal(out[: n + 1].cpu(), counts.to(torch.int32))


def test_bracket_mode_on_peaked_rows_is_mostly_exact() -> None:
    """Peaked rows (large scale): most intervals close in the one bracket pass; the oracle gives
    the interval [k, k]."""
    q, k = random_qk(95, 1, 2, 2, 64, 200, 32)
    out = triton_row_stats.row_stats(q, k, scale=1.0, ps=ALL_PS, budgets="bracket")
    exact = oracle(q, k, scale=1.0, ps=ALL_PS).top_p_budget.to(q.device)
    closed = out.top_p_budget_low == out.top_p_budget_high
    assert closed.float().mean() > 0.5
    assert torch.equal(out.top_p_budget[closed], exact[closed])
    ref = oracle(q, k, scale=1.0, ps=ALL_PS, budgets="bracket")
    assert torch.equal(ref.top_p_budget_low, ref.top_p_budget_high)
    assert oracle(q, k, ps=ALL_PS).top_p_budget_low is None


# ---------------------------------------------------------------------------- api and errors
def test_api_dispatches_to_triton() -> None:
    q, k = random_qk(71, 1, 2, 1, 24, 40, 32)
    out = api.row_stats(q, k, causal=True, ps=(0.9,), impl="triton")
    assert_matches(out, oracle(q, k, causal=True, ps=(0.9,)))


@pytest.mark.parametrize(
    "bad", ["ps", "dtype", "heads", "selection", "positions", "passes", "budgets", "rtol"]
)
def test_rejects_bad_inputs(bad: str) -> None:
    q, k = random_qk(81, 1, 2, 2, 16, 16, 16)
    kwargs: dict = {}
    if bad == "ps":
        kwargs["ps"] = (0.5, 1.5)
    elif bad == "dtype":
        k = k.half()
    elif bad == "heads":
        k = torch.cat([k, k[:, :1]], dim=1)
    elif bad == "selection":
        kwargs["selection"] = Layout.dense(16, 32, block_q=16, block_k=16, device=DEVICE)
    elif bad == "positions":
        kwargs["relevant_positions"] = torch.full((1, 16, 2), 16, device=DEVICE)
    elif bad == "budgets":
        kwargs["budgets"] = "approximate"
    elif bad == "rtol":
        kwargs["budget_rtol"] = 0.1  # exact mode
    else:
        kwargs["max_search_passes"] = 0
    with pytest.raises(ValueError):
        triton_row_stats.row_stats(q, k, **kwargs)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or api.interpret_mode(),
    reason="needs a CUDA device and TRITON_INTERPRET unset",
)
def test_long_bf16_on_gpu() -> None:
    """N = 4096 bf16 causal with GQA: statistics against the fp32 oracle, budgets against the
    float64 one; the kernels' peak memory stays far below one head's N x N fp32 scores."""
    n, heads, kv_heads, d_head = 4096, 4, 2, 128
    q, k = random_qk(91, 1, heads, kv_heads, n, n, d_head, torch.bfloat16)
    positions = torch.randint(-1, n, (1, n, 4), generator=torch.Generator().manual_seed(92))
    positions = positions.to(DEVICE)

    def stats() -> object:
        return triton_row_stats.row_stats(
            q, k, causal=True, ps=ALL_PS, relevant_positions=positions
        )

    stats()  # autotune first: Triton's benchmarking allocates a 256 MB cache-flush buffer
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    out = stats()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    assert peak < n * n * 4 / 8, f"peak {peak / 2**20:.1f} MiB"

    ref = reference.row_stats(
        q, k, causal=True, ps=ALL_PS, relevant_positions=positions, compute_dtype=torch.float32
    )
    for name in ("lse", "max_score", "entropy", "relevant_mass"):
        torch.testing.assert_close(
            getattr(out, name),
            getattr(ref, name),
            atol=1e-4,
            rtol=1e-4,
            msg=lambda text, name=name: f"{name}: {text}",
        )
    del ref
    exact = oracle(q, k, causal=True, ps=ALL_PS).top_p_budget
    # fp32 accumulation: a boundary whose cumulative mass lies within ~1e-7 of p (keys weigh
    # ~1 / 4096 here) may come out one key off.
    differ = out.top_p_budget != exact
    assert differ.float().mean() < 2e-3, f"{int(differ.sum())} of {differ.numel()} budgets differ"
    assert (out.top_p_budget.long() - exact.long()).abs().max() <= 1


@pytest.mark.parametrize(
    ("configs", "short", "fp32"),
    [
        (
            triton_row_stats._STATS_CONFIGS,
            triton_row_stats._STATS_SHORT,
            triton_row_stats._STATS_FP32,
        ),
        (
            triton_row_stats._SEARCH_CONFIGS,
            triton_row_stats._SEARCH_SHORT,
            triton_row_stats._SEARCH_FP32,
        ),
    ],
)
def test_autotuning_keeps_fp32_and_short_inputs_to_one_configuration(configs, short, fp32):
    tuned = common.gpu_configs(configs)

    def shapes(dtype: torch.dtype, len_bucket: int) -> list[tuple[int, int, int, int]]:
        chosen = triton_row_stats.candidate_configs(tuned, dtype, len_bucket, short, fp32)
        return [common.tile_shape(config) for config in chosen]

    assert shapes(torch.float32, 65536) == shapes(torch.float32, 256) == [fp32]
    assert shapes(torch.bfloat16, triton_row_stats.SHORT_KEYS) == [short]
    assert shapes(torch.float16, 2 * triton_row_stats.SHORT_KEYS) == list(configs)
    with pytest.raises(ValueError, match="not among"):
        triton_row_stats.candidate_configs(tuned, torch.float32, 256, short, (8, 8, 1, 1))


def test_restricted_statistics_take_the_reference_and_triton_refuses_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the reference restricts to a layout: "auto" takes it (logged), "triton" raises."""
    q, k = random_qk(71, 1, 2, 2, 32, 32, 16)
    layout = Layout.dense(32, 32, block_q=16, block_k=16, causal=True, device=DEVICE)
    with pytest.raises(RuntimeError, match="restrict"):
        api.row_stats(q, k, restrict=layout, impl="triton")
    with caplog.at_level(logging.DEBUG, logger="kernels.api"):
        dense = Layout.dense(32, 32, block_q=16, block_k=16, causal=True)
        out = api.row_stats(q.cpu(), k.cpu(), causal=True, restrict=dense)
    assert "restrict" in caplog.text
    assert_matches(out, oracle(q.cpu(), k.cpu(), causal=True))

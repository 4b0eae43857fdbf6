"""The torch oracles against independent implementations: SDPA, FlexAttention, brute force."""

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from kernels import reference
from kernels.layout import Layout, num_blocks


def qkv(seed, batch=2, heads=4, kv_heads=4, q_len=70, kv_len=70, d=16, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d, generator=generator, dtype=dtype)
    k = torch.randn(batch, kv_heads, kv_len, d, generator=generator, dtype=dtype)
    v = torch.randn(batch, kv_heads, kv_len, d, generator=generator, dtype=dtype)
    return q, k, v


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_dense_layout_matches_sdpa(causal, kv_heads):
    q, k, v = qkv(0, kv_heads=kv_heads)
    layout = Layout.dense(70, 70, block_q=32, block_k=16, causal=causal)
    out, lse = reference.attention(q, k, v, layout, compute_dtype=torch.float64)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal, enable_gqa=kv_heads != 4
    )
    assert relative_error(out, expected) < 1e-12
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64)
    if causal:
        scores = scores.masked_fill(~torch.ones(70, 70, dtype=torch.bool).tril(), -math.inf)
    assert torch.allclose(lse.double(), scores.logsumexp(-1), atol=1e-5)


def test_sparse_layout_matches_flex_attention_mask_mod():
    q, k, v = qkv(1, q_len=96, kv_len=80, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    blocks = torch.rand(2, 4, num_blocks(96, 32), num_blocks(80, 16), generator=generator) < 0.5
    token_mask = torch.rand(2, 4, 96, 80, generator=generator) < 0.8
    layout = Layout.from_block_mask(
        blocks, 96, 80, block_q=32, block_k=16, causal=True, token_mask=token_mask
    )
    dense = layout.to_dense()
    assert (~dense).any(-1).any(), "some rows are empty"

    def mask_mod(b, h, q_idx, kv_idx):
        return dense[b, h, q_idx, kv_idx]

    flex_mask = create_block_mask(mask_mod, 2, 4, 96, 80, device="cpu")
    expected = flex_attention(q, k, v, block_mask=flex_mask)
    out, _ = reference.attention(q, k, v, layout)
    assert relative_error(out, expected) < 1e-5


def test_empty_rows_give_zero_output_and_minus_inf_lse():
    q, k, v = qkv(2, q_len=32, kv_len=32)
    blocks = torch.tensor([[[[True, False], [False, False]]]])
    layout = Layout.from_block_mask(blocks, 32, 32, block_q=16, block_k=16)
    out, lse = reference.attention(q, k, v, layout)
    assert torch.isfinite(out).all()
    assert (out[:, :, 16:] == 0).all() and torch.isinf(lse[:, :, 16:]).all()
    assert torch.isfinite(lse[:, :, :16]).all()
    q.requires_grad_(True)
    reference.attention(q, k, v, layout)[0].sum().backward()
    assert torch.isfinite(q.grad).all()


def test_row_threshold_layout_equals_token_mask_layout():
    q, k, v = qkv(3)
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64)
    threshold = reference.top_k_threshold(scores, 5)
    by_threshold = Layout.from_row_threshold(scores, threshold, block_q=16, block_k=16)
    by_mask = Layout.from_token_mask(scores >= threshold.unsqueeze(-1), block_q=16, block_k=16)
    out_threshold, _ = reference.attention(q, k, v, by_threshold, compute_dtype=torch.float64)
    out_mask, _ = reference.attention(q, k, v, by_mask, compute_dtype=torch.float64)
    assert torch.equal(out_threshold, out_mask)


def brute_top_p_budget(row, p):
    ordered = sorted(row.tolist(), reverse=True)
    mass = 0.0
    for count, value in enumerate(ordered, start=1):
        mass += value
        if mass >= p * sum(ordered) * (1 - 1e-12):
            return count
    return 0


def test_top_p_budget_and_threshold_against_brute_force():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(6, 30, generator=generator, dtype=torch.float64) * 2
    probs = scores.softmax(-1)
    for p in (0.3, 0.5, 0.9, 0.99, 1.0):
        budget = reference.top_p_budget(probs, p)
        assert budget.tolist() == [brute_top_p_budget(row, p) for row in probs]
        threshold = reference.top_p_threshold(scores, p)
        kept = scores >= threshold.unsqueeze(-1)
        assert torch.equal(kept.sum(-1).to(torch.int32), budget)
        assert ((probs * kept).sum(-1) >= p - 1e-12).all()
        # Minimal: dropping the smallest kept key falls below p.
        smallest = probs.masked_fill(~kept, math.inf).amin(-1)
        assert ((probs * kept).sum(-1) - smallest < p).all()


def test_top_p_closed_forms():
    uniform = torch.full((1, 10), 0.1, dtype=torch.float64)
    assert reference.top_p_budget(uniform, 0.45).item() == 5
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    assert reference.top_p_budget(one_hot, 0.99).item() == 1
    assert reference.top_p_budget(torch.zeros(1, 4), 0.5).item() == 0


def test_top_k_threshold_handles_short_rows():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    assert reference.top_k_threshold(scores, 2).item() == 1.5  # between the 2nd and the 3rd
    assert reference.top_k_threshold(scores, 3, mask).item() == -math.inf  # keep both keys
    assert reference.top_k_threshold(scores, 1, torch.zeros_like(mask)).item() == math.inf


def test_top_p_budget_of_equal_fp32_weights_is_exact():
    """Six equal keys at p = 0.5 need 3, although 1/6 is not exact in fp32 (a prefix sum in fp32
    fell short of p and gave 4)."""
    probs = torch.softmax(torch.zeros(1, 6), -1)
    assert reference.top_p_budget(probs, 0.5).item() == 3
    for n in range(1, 40):
        probs = torch.softmax(torch.zeros(1, n), -1)
        for p in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            assert reference.top_p_budget(probs, p).item() == math.ceil(p * n * (1 - 1e-9)), (n, p)


def test_fp32_row_stats_budgets_equal_float64_on_peaked_rows():
    """p = 1 on peaked rows: fp32 prefix sums saturated after a few keys; float64 counts the keys
    until the rest weighs less than the tolerance."""
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(1, 2, 16, 32, generator=generator) * 3
    k = torch.randn(1, 2, 64, 32, generator=generator) * 3
    ps = (0.5, 0.9, 0.99, 1.0)
    fp32 = reference.row_stats(q, k, causal=True, ps=ps).top_p_budget
    fp64 = reference.row_stats(q, k, causal=True, ps=ps, compute_dtype=torch.float64).top_p_budget
    assert torch.equal(fp32, fp64)
    assert fp64[..., -1].float().mean() > 10  # the rows are peaked, not one-hot


def random_rows_with_ties(seed: int, rows: int = 400, n: int = 24) -> torch.Tensor:
    """``[rows, n]`` scores with exact ties, near-ties (1e-7 apart) and well separated values."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, n, generator=generator, dtype=torch.float64)
    source = torch.randint(0, n, (rows, n // 3), generator=generator)
    target = torch.randint(0, n, (rows, n // 3), generator=generator)
    tiny = torch.randn(rows, n // 3, generator=generator, dtype=torch.float64) * 1e-7
    exact = torch.rand(rows, n // 3, generator=generator) < 0.5
    copied = scores.gather(-1, source) + torch.where(exact, 0.0, tiny)
    return scores.scatter(-1, target, copied)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tolerance", [0.0, 1e-6, 1e-3])
def test_separating_threshold_keeps_the_count_and_its_near_ties(tolerance: float, dtype):
    """Near-ties 1e-7 apart are a few fp32 ulps: in fp32 some midpoints do not exist."""
    scores = random_rows_with_ties(12).to(dtype)
    generator = torch.Generator().manual_seed(13)
    mask = torch.rand(scores.shape, generator=generator) < 0.8
    count = torch.randint(0, 30, scores.shape[:1], generator=generator)
    threshold = reference.separating_threshold(scores, count, mask, tolerance=tolerance)
    assert threshold.dtype == scores.dtype
    for row, t, c, m in zip(scores.double(), threshold.double(), count.tolist(), mask, strict=True):
        visible = row[m].sort(descending=True).values
        c = min(c, len(visible))
        kept = visible >= t
        if c == 0:
            assert t == math.inf
            continue
        # Every visible score lies farther than the tolerance from the threshold.
        assert ((visible - t).abs() > tolerance).all()
        # The count largest are kept; any more are a chain of gaps <= 2 tolerance after them.
        n_kept = int(kept.sum())
        assert n_kept >= c
        # (a gap of a few ulps may hold no midpoint the dtype can store)
        slack = 2 * tolerance + 4 * torch.finfo(dtype).eps * visible.abs().max()
        assert (visible[c - 1 : n_kept - 1] - visible[c:n_kept] <= slack).all()
        if n_kept < len(visible):
            assert visible[n_kept - 1] - visible[n_kept] > 2 * tolerance
        else:
            assert t == -math.inf


def test_score_tolerance_bounds_the_fp32_rounding_of_every_summation_order():
    """fp32 scores computed in three orders (einsum, a reversed sum, k q^T) differ from the float64
    ones by less than half the tolerance, and from each other by less than the tolerance."""
    generator = torch.Generator().manual_seed(14)
    q = torch.randn(2, 4, 50, 48, generator=generator) * 4
    k = torch.randn(2, 2, 60, 48, generator=generator) * torch.rand(
        2, 2, 60, 1, generator=generator
    )
    scale = 0.3
    tolerance = reference.score_tolerance(q, k, scale).unsqueeze(-1)
    exact = reference.scaled_scores(q.double(), k.double(), scale, torch.float64)
    keys = reference.repeat_kv(k, 4)
    orders = [
        reference.scaled_scores(q, k, scale),
        (q.unsqueeze(-2) * keys.unsqueeze(-3)).flip(-1).cumsum(-1)[..., -1] * scale,
        (keys @ q.transpose(-1, -2)).transpose(-1, -2) * scale,
    ]
    for scores in orders:
        assert ((scores.double() - exact).abs() < tolerance / 2).all()
    assert (tolerance < 1e-3 * exact.abs().amax(-1, keepdim=True)).all()  # not vacuous


def test_row_stats_against_direct_formulas():
    q, k, _ = qkv(5, q_len=50, kv_len=60)
    positions = torch.randint(-1, 60, (2, 50, 3), generator=torch.Generator().manual_seed(5))
    selection = Layout.from_block_mask(
        torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(6)) < 0.5,
        50,
        60,
        block_q=16,
        block_k=16,
    )
    stats = reference.row_stats(
        q,
        k,
        causal=True,
        selection=selection,
        relevant_positions=positions,
        compute_dtype=torch.float64,
    )
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64)
    visible = torch.ones(50, 60, dtype=torch.bool).tril(diagonal=10)
    probs = scores.masked_fill(~visible, -math.inf).softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    assert torch.allclose(stats.entropy.double(), entropy, atol=1e-5)
    assert torch.allclose(stats.max_weight.double(), probs.amax(-1), atol=1e-6)
    kept = selection.to_dense() & visible
    assert torch.allclose(stats.selection_mass.double(), (probs * kept).sum(-1), atol=1e-6)
    for b, i in [(0, 0), (1, 49), (0, 25)]:
        for h in range(4):
            expected = sum(probs[b, h, i, j].item() for j in positions[b, i].tolist() if j >= 0)
            assert stats.relevant_mass[b, h, i].item() == pytest.approx(expected, abs=1e-6)
    assert stats.top_p_budget.shape == (2, 4, 50, 4)
    assert stats.top_p_budget[..., 0].le(stats.top_p_budget[..., -1]).all()


def test_mean_pooled_block_scores_by_hand():
    q, k, _ = qkv(7, batch=1, heads=2, kv_heads=1, q_len=40, kv_len=40, d=8)
    scores = reference.mean_pooled_block_scores(q, k, block_q=16, block_k=16, causal=True)
    assert scores.shape == (1, 2, 3, 3)
    last_q = q[0, 1, 32:40].mean(0)
    first_k = k[0, 0, 0:16].mean(0)
    assert scores[0, 1, 2, 0].item() == pytest.approx(
        (last_q @ first_k).item() / math.sqrt(8), rel=1e-5
    )
    assert math.isinf(scores[0, 0, 0, 1].item()), "block above the diagonal is invisible"


def test_block_selection_rules():
    scores = torch.tensor([[[[0.5, 0.1, 0.3, 0.1], [0.05, 0.05, 0.6, 0.3]]]])
    assert reference.select_top_k_blocks(scores, 2)[0, 0].tolist() == [
        [True, False, True, False],
        [False, False, True, True],
    ]
    # Row 0: first block forced and diagonal (col 2) forced -> 0.8 >= 0.7 already.
    keep = reference.select_cumulative_blocks(scores, 0.7)
    assert keep[0, 0, 0].tolist() == [True, False, True, False]
    # Row 1: first (0.05) + diagonal (col 3, 0.3), then 0.6 -> 0.95 >= 0.7.
    assert keep[0, 0, 1].tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="tau"):
        reference.select_cumulative_blocks(scores, 0.0)


def test_row_stats_restricted_to_a_layout_describe_the_sparse_attention():
    """``restrict``: entropy, max weight, lse, budgets and masses of the softmax that
    `reference.attention` uses with the layout, computed here from its probabilities."""
    q, k, _ = qkv(15, q_len=40, kv_len=40)
    scores = reference.scaled_scores(q, k, compute_dtype=torch.float64)
    threshold = reference.top_k_threshold(scores, 6)
    layout = Layout.from_row_threshold(scores, threshold, block_q=16, block_k=16, causal=True)
    relevant = torch.randint(-1, 40, (2, 40, 3), generator=torch.Generator().manual_seed(16))
    stats = reference.row_stats(
        q,
        k,
        causal=True,
        ps=(0.5, 0.9),
        relevant_positions=relevant,
        restrict=layout,
        compute_dtype=torch.float64,
    )
    kept = layout.to_dense(scores) & reference.attention_mask(40, 40, True, "cpu")
    probs, lse = reference.masked_softmax(scores, kept)
    plogp = torch.where(probs > 0, probs * probs.log(), torch.zeros_like(probs))
    torch.testing.assert_close(stats.entropy, (-plogp.sum(-1)).float())
    torch.testing.assert_close(stats.lse, lse.float())
    torch.testing.assert_close(stats.max_weight, probs.amax(-1).float())
    for index, p in enumerate((0.5, 0.9)):
        assert torch.equal(stats.top_p_budget[..., index], reference.top_p_budget(probs, p))
    mass = reference.gather_relevant_mass(probs, relevant)
    torch.testing.assert_close(stats.relevant_mass, mass.float())
    assert (stats.top_p_budget <= kept.sum(-1, keepdim=True)).all()

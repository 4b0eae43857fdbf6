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
    total = 0.0
    for count, value in enumerate(ordered, start=1):
        total += value
        if total >= min(p, sum(ordered)) - 1e-12:
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
    assert reference.top_k_threshold(scores, 2).item() == 2.0
    assert reference.top_k_threshold(scores, 3, mask).item() == 1.0


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

"""Layout constructors, views and validation."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.layout import (
    Layout,
    causal_block_mask,
    causal_token_mask,
    num_blocks,
    pool_to_blocks,
    true_positions,
)


def random_block_mask(seed, batch, heads, q_len, kv_len, block_q, block_k, density=0.4):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, num_blocks(q_len, block_q), num_blocks(kv_len, block_k))
    return torch.rand(shape, generator=generator) < density


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    q_len=st.integers(1, 150),
    kv_len=st.integers(1, 150),
    block_q=st.sampled_from([16, 32, 64]),
    block_k=st.sampled_from([16, 32, 64]),
    causal=st.booleans(),
    density=st.floats(0.0, 1.0),
)
def test_block_mask_round_trip(seed, q_len, kv_len, block_q, block_k, causal, density):
    mask = random_block_mask(seed, 2, 3, q_len, kv_len, block_q, block_k, density)
    layout = Layout.from_block_mask(
        mask, q_len, kv_len, block_q=block_q, block_k=block_k, causal=causal
    )
    expected = mask & causal_block_mask(q_len, kv_len, block_q, block_k) if causal else mask
    assert torch.equal(layout.block_mask(), expected)
    assert torch.equal(layout.kv_counts, expected.sum(-1).to(torch.int32))
    # Token level: block membership, then the causal rule.
    dense = layout.to_dense()
    brute = torch.zeros(2, 3, q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(kv_len):
            brute[:, :, i, j] = expected[:, :, i // block_q, j // block_k]
            if causal and j > i + kv_len - q_len:
                brute[:, :, i, j] = False
    assert torch.equal(dense, brute)
    # Transposed view lists, per key block, the query blocks that select it.
    q_indices, q_counts = layout.transpose()
    assert torch.equal(q_counts, expected.sum(-2).to(torch.int32))
    for b, h, col in [(0, 0, 0), (1, 2, expected.shape[-1] - 1)]:
        listed = q_indices[b, h, col, : q_counts[b, h, col]].tolist()
        assert listed == expected[b, h, :, col].nonzero().flatten().tolist()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    q_len=st.integers(1, 100),
    kv_len=st.integers(1, 100),
    block=st.sampled_from([16, 32]),
)
def test_token_mask_constructor_keeps_exact_entries(seed, q_len, kv_len, block):
    generator = torch.Generator().manual_seed(seed)
    token_mask = torch.rand(1, 2, q_len, kv_len, generator=generator) < 0.1
    layout = Layout.from_token_mask(token_mask, block_q=block, block_k=block)
    assert torch.equal(layout.to_dense(), token_mask)
    assert torch.equal(layout.block_mask(), pool_to_blocks(token_mask, block, block))
    coarse = Layout.from_token_mask(token_mask, block_q=block, block_k=block, keep_token_mask=False)
    assert (coarse.to_dense() | ~token_mask).all(), "whole blocks cover every kept entry"


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    q_len=st.integers(1, 120),
    kv_len=st.integers(1, 120),
    block_q=st.sampled_from([16, 32, 256]),
    causal=st.booleans(),
    data=st.data(),
)
def test_rows_of_the_dense_mask_equal_the_full_masks_rows(
    seed, q_len, kv_len, block_q, causal, data
):
    """``to_dense(scores, rows)``: any row range (block-aligned or not, empty, the last partial
    block) of a layout with blocks, causal rule, token mask and row threshold equals those rows
    of the full mask."""
    start = data.draw(st.integers(0, q_len), label="start")
    stop = data.draw(st.integers(start, q_len), label="stop")
    generator = torch.Generator().manual_seed(seed)
    mask = random_block_mask(seed, 2, 3, q_len, kv_len, block_q, 16)
    scores = torch.randn(2, 3, q_len, kv_len, generator=generator)
    layout = Layout.from_block_mask(mask, q_len, kv_len, block_q=block_q, block_k=16, causal=causal)
    token_mask = torch.rand(1, 3, q_len, kv_len, generator=generator) < 0.7
    threshold = torch.randn(2, 1, q_len, generator=generator)
    refined = dataclasses.replace(layout, token_mask=token_mask, row_threshold=threshold)
    rows = range(start, stop)
    for candidate in (layout, refined):
        full = candidate.to_dense(scores)
        part = candidate.to_dense(scores[:, :, start:stop], rows)
        assert part.shape == (2, 3, stop - start, kv_len)
        assert torch.equal(part, full[:, :, start:stop])


@pytest.mark.parametrize("rows", [range(0, 5, 2), range(3, 1), range(0, 41), [0, 1]])
def test_dense_rows_outside_the_layout_are_refused(rows):
    layout = Layout.dense(40, 40, block_q=16, block_k=16)
    with pytest.raises(ValueError, match="rows must"):
        layout.to_dense(rows=rows)


def test_dense_and_causal_density():
    assert Layout.dense(256, 256).block_density() == 1.0
    causal = Layout.dense(256, 256, block_q=16, block_k=16, causal=True)
    assert causal.block_density() == pytest.approx((16 * 17 / 2) / 256)
    assert torch.equal(causal.to_dense()[0, 0], causal_token_mask(256, 256, "cpu"))


def test_decoding_causal_is_end_aligned():
    layout = Layout.dense(1, 100, block_q=16, block_k=16, causal=True)
    assert layout.to_dense()[0, 0, 0].all(), "a single decoding query sees the whole prefix"
    mask = causal_token_mask(3, 5, "cpu")
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_row_threshold_layout_needs_scores():
    scores = torch.randn(1, 1, 40, 40)
    threshold = scores.topk(3, dim=-1).values[..., -1]
    layout = Layout.from_row_threshold(scores, threshold, block_q=16, block_k=16)
    dense = layout.to_dense(scores)
    assert torch.equal(dense.sum(-1), torch.full((1, 1, 40), 3))
    with pytest.raises(ValueError, match="row_threshold"):
        layout.to_dense()


@pytest.mark.parametrize("causal", [False, True])
def test_one_key_block_reads_nothing_back(causal, op_counter):
    """A selection over one key block (a short sequence) builds its layout without reading the
    counts back (a host sync per layer and step on a GPU); longer ones still need the widest row."""
    scores = torch.randn(2, 3, 41, 41, generator=torch.Generator().manual_seed(0))
    threshold = scores.topk(5, dim=-1).values[..., -1]
    with op_counter() as short:
        layout = Layout.from_row_threshold(scores, threshold, block_q=64, block_k=64, causal=causal)
    assert short.read_backs == 0
    kept = scores >= threshold.unsqueeze(-1)
    if causal:
        kept &= causal_token_mask(41, 41, scores.device)
    assert layout.kv_indices.shape == (2, 3, 1, 1)
    assert torch.equal(layout.to_dense(scores), kept)
    with op_counter() as long:
        Layout.from_row_threshold(scores, threshold, block_q=16, block_k=16, causal=causal)
    assert long.read_backs == 1


def test_expand_broadcasts_without_copy():
    layout = Layout.dense(64, 64).expand(2, 4)
    assert layout.kv_counts.shape == (2, 4, 1) and layout.kv_counts.stride(0) == 0


def make(**changes):
    fields = dict(
        kv_indices=torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32),
        kv_counts=torch.tensor([[[2, 1]]], dtype=torch.int32),
        q_len=40,
        kv_len=40,
        block_q=32,
        block_k=32,
    )
    fields.update(changes)
    return Layout(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"block_q": 24}, "block_q must be a power of two"),
        ({"block_k": 8}, "block_k must be a power of two >= 16"),
        ({"q_len": 0}, "q_len must be a positive integer"),
        ({"kv_counts": torch.tensor([[[2, 1]]])}, "must be int32"),
        (
            {"kv_counts": torch.tensor([[[2, 1, 0]]], dtype=torch.int32)},
            "kv_counts must have shape",
        ),
        ({"kv_indices": torch.zeros(1, 1, 3, 2, dtype=torch.int32)}, "kv_indices must have shape"),
        ({"kv_counts": torch.tensor([[[3, 1]]], dtype=torch.int32)}, "kv_counts must lie in"),
        ({"kv_indices": torch.tensor([[[[0, 2], [1, 0]]]], dtype=torch.int32)}, "out of range"),
        (
            {"kv_indices": torch.tensor([[[[1, 0], [1, 0]]]], dtype=torch.int32)},
            "strictly increasing",
        ),
        (
            {"kv_indices": torch.tensor([[[[1, 1], [1, 0]]]], dtype=torch.int32)},
            "strictly increasing",
        ),
        ({"token_mask": torch.ones(1, 1, 40, 41, dtype=torch.bool)}, "token_mask must have shape"),
        ({"token_mask": torch.ones(1, 1, 40, 40)}, "token_mask must be a 4-d bool"),
        ({"row_threshold": torch.zeros(1, 1, 39)}, "row_threshold must have shape"),
        ({"row_threshold": torch.zeros(2, 1, 40)}, "row_threshold must have shape"),
    ],
)
def test_validation_names_the_problem(changes, message):
    make()  # the unchanged layout is valid
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_padding_entries_past_the_count_are_ignored():
    layout = make(kv_indices=torch.tensor([[[[0, 1], [1, 1]]]], dtype=torch.int32))
    assert layout.block_mask()[0, 0].tolist() == [[True, True], [False, True]]


def test_block_mask_constructor_checks_its_shape():
    with pytest.raises(ValueError, match="2 x 2 blocks"):
        Layout.from_block_mask(
            torch.ones(1, 1, 2, 3, dtype=torch.bool), 40, 40, block_q=32, block_k=32
        )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 6),
    n=st.integers(0, 40),
    density=st.floats(0.0, 1.0),
    fill=st.integers(-1, 50),
)
def test_true_positions_lists_each_rows_true_entries(seed, rows, n, density, fill):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, n, generator=generator) < density
    positions, counts = true_positions(mask, fill=fill)
    width = int(mask.sum(-1).max()) if n else 0
    assert positions.dtype == torch.int32 and positions.shape == (rows, width)
    assert torch.equal(counts, mask.sum(-1, dtype=torch.int32))
    for row, listed in zip(mask, positions.tolist(), strict=True):
        expected = row.nonzero().flatten().tolist()
        assert listed == expected + [fill] * (width - len(expected))


@pytest.mark.parametrize("causal", [(True, True), (True, False), (False, False)])
def test_union_and_intersect_keep_exactly_the_combined_entries(causal):
    generator = torch.Generator().manual_seed(5)
    masks = [torch.rand(1, 2, 40, 50, generator=generator) < 0.3 for _ in range(2)]
    scores = torch.randn(1, 2, 40, 50, generator=generator)
    a = Layout.from_token_mask(masks[0], block_q=16, block_k=16, causal=causal[0])
    b = Layout.from_row_threshold(
        scores, torch.full((1, 1, 40), 0.5), block_q=16, block_k=16, causal=causal[1]
    )
    for combined, expected in (
        (a.union(b, scores), a.to_dense() | b.to_dense(scores)),
        (a.intersect(b, scores), a.to_dense() & b.to_dense(scores)),
    ):
        assert torch.equal(combined.to_dense(), expected)
    blocks = Layout.from_block_mask(
        masks[1][..., ::16, ::16][..., :3, :4], 40, 50, block_q=16, block_k=16
    )
    dense = Layout.dense(40, 50, block_q=16, block_k=16)
    assert torch.equal(blocks.union(dense).to_dense(), dense.to_dense().expand(1, 2, 40, 50))
    assert blocks.intersect(dense).token_mask is None  # block level: no token mask
    with pytest.raises(ValueError, match="pass the scaled scores"):
        a.union(b)
    with pytest.raises(ValueError, match="must share"):
        a.union(Layout.dense(40, 40, block_q=16, block_k=16))

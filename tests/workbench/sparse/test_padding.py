"""Padded batches: every method gives each example's real tokens what the example gets alone
(`workbench.sparse.padding`), whatever the padded positions hold."""

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench.sparse as sparse
from workbench.sparse.padding import real_spans

BATCH, HEADS, KV_HEADS, LENGTH, D_HEAD = 5, 2, 1, 40, 8
SPANS = [(0, LENGTH), (0, 29), (7, LENGTH), (0, 0), (LENGTH - 3, LENGTH)]
"""Per example of the padded batch: unpadded, right-padded, left-padded, all padding, and left-
padded up to the last 3 tokens (shorter than the decoded queries)."""
SELF_ATTENTION_ONLY = {"dusa"}
"""Methods that take no decoding call (and say so)."""
DECODED = 6
"""Queries of a decoding call: the last 6 tokens."""
OPTIONS = {"block_size": 16, "impl": "reference"}
METHODS = [name for name in sparse.names() if not sparse.method_class(name).needs_calibration]


def padded_batch(seed: int = 0):
    """q, k, v ``[5, heads, 40, 8]`` float64 whose padded positions hold large values (a method
    that selected among them would pick them) and the key padding of `SPANS`."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(BATCH, heads, LENGTH, D_HEAD, generator=generator, dtype=torch.float64)
        for heads in (HEADS, KV_HEADS, KV_HEADS)
    )
    padding = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    for example, (start, end) in enumerate(SPANS):
        padding[example, start:end] = True
    junk = ~padding[:, None, :, None]
    k = torch.where(junk, 30.0 * q.mean(1, keepdim=True).abs() + 30.0, k)
    v = torch.where(junk, 1e3, v)
    return q, k, v, padding


def attend(method, q, k, v, state, seed, **options):
    torch.manual_seed(seed)  # random methods draw the same keys in both runs
    return method.attend(q, k, v, state=state, **OPTIONS, **options)


@pytest.mark.parametrize(("causal", "queries"), [(False, LENGTH), (True, LENGTH), (True, DECODED)])
@pytest.mark.parametrize("name", METHODS)
def test_padded_batch_gives_each_example_what_it_gets_alone(
    name: str, causal: bool, queries: int
) -> None:
    """Full forwards (``queries == kv_len``) and decoding (the last `DECODED` tokens' queries
    against every key, causal)."""
    method = sparse.short_input(name)
    state = method.state_module(layer=0, heads=HEADS, d_head=D_HEAD)
    state = None if state is None else state.to(torch.float64)
    q, k, v, padding = padded_batch()
    q = q[:, :, LENGTH - queries :]
    if queries < LENGTH and name in SELF_ATTENTION_ONLY:
        with pytest.raises(ValueError, match="needs self-attention"):
            attend(method, q, k, v, state, 1, causal=causal, key_padding=padding)
        return
    with torch.no_grad():
        out, layout = attend(method, q, k, v, state, 1, causal=causal, key_padding=padding)
        kept = layout.to_dense()
        torch.manual_seed(1)
        for example, (start, end) in enumerate(SPANS):
            # the query rows of the example's tokens (query i is token LENGTH - queries + i)
            rows = slice(max(start - LENGTH + queries, 0), max(end - LENGTH + queries, 0))
            keys = slice(start, end)
            padded_rows = torch.ones(queries, dtype=torch.bool)
            padded_rows[rows] = False
            padded_keys = torch.ones(LENGTH, dtype=torch.bool)
            padded_keys[keys] = False
            assert not out[example, :, padded_rows].any(), (name, example)
            assert not kept[example, :, padded_rows].any(), (name, example)
            assert not kept[example][..., padded_keys].any(), (name, example)
            if rows.start == rows.stop:
                continue
            one = [q[example : example + 1, :, rows]]
            one += [tensor[example : example + 1, :, keys] for tensor in (k, v)]
            alone, alone_layout = method.attend(*one, causal=causal, state=state, **OPTIONS)
            torch.testing.assert_close(out[example : example + 1, :, rows], alone, rtol=0, atol=0)
            scores = None
            if alone_layout.row_threshold is not None:
                scores = (one[0] @ one[1].transpose(-1, -2)) * D_HEAD**-0.5
            expected = alone_layout.to_dense(scores)[0].expand(HEADS, -1, -1)
            assert torch.equal(kept[example, :, rows, keys], expected), (name, example)


def test_padded_batch_differentiates_like_the_examples_alone() -> None:
    method = sparse.get("top_k", k=5)
    q, k, v, padding = padded_batch(seed=3)
    q, k, v = (tensor.requires_grad_() for tensor in (q, k, v))
    out, _ = method.attend(q, k, v, causal=True, key_padding=padding, **OPTIONS)
    (out * torch.linspace(-1, 1, D_HEAD, dtype=out.dtype)).sum().backward()
    for example, (start, end) in enumerate(SPANS[:3]):
        rows = slice(start, end)
        one = [
            tensor.detach()[example : example + 1, :, rows].requires_grad_() for tensor in (q, k, v)
        ]
        alone, _ = method.attend(*one, causal=True, **OPTIONS)
        (alone * torch.linspace(-1, 1, D_HEAD, dtype=alone.dtype)).sum().backward()
        for full, part in zip((q, k, v), one, strict=True):
            torch.testing.assert_close(full.grad[example : example + 1, :, rows], part.grad)
            outside = torch.ones(LENGTH, dtype=torch.bool)
            outside[rows] = False
            assert not full.grad[example, :, outside].any()


def test_a_mask_without_padding_takes_the_batched_path_bitwise() -> None:
    method = sparse.get("top_k", k=5)
    q, k, v, _ = padded_batch()
    with torch.no_grad():
        unmasked, _ = method.attend(q, k, v, causal=True, **OPTIONS)
        masked, _ = method.attend(
            q, k, v, causal=True, key_padding=torch.ones(BATCH, LENGTH, dtype=torch.bool), **OPTIONS
        )
    assert torch.equal(masked, unmasked)


def test_padding_in_pieces_is_dropped_after_selection_with_a_warning() -> None:
    """Real keys in several spans (no one span per example): the method selects on the padded
    sequence, the padded keys are dropped afterwards; methods that would not see the padding
    refuse."""
    q, k, v, _ = padded_batch()
    padding = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    padding[1, 10:14] = False
    with torch.no_grad(), pytest.warns(UserWarning, match="not one span"):
        _, layout = sparse.get("top_k", k=5).attend(
            q, k, v, causal=False, key_padding=padding, **OPTIONS
        )
    scores = (q @ k.transpose(-1, -2)) * D_HEAD**-0.5
    assert not layout.to_dense(scores)[1, :, :, 10:14].any()
    with warnings.catch_warnings(), pytest.raises(NotImplementedError, match="key padding"):
        warnings.simplefilter("ignore")
        sparse.get("nsa").attend(q, k, v, causal=True, key_padding=padding, **OPTIONS)


@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)).map(sorted), min_size=1, max_size=5),
    st.integers(12, 16),
)
def test_real_spans_finds_one_span_per_example(spans: list, length: int) -> None:
    padding = torch.zeros(len(spans), length, dtype=torch.bool)
    for example, (start, end) in enumerate(spans):
        padding[example, start:end] = True
    expected = [(start, end) if start < end else (0, 0) for start, end in spans]
    assert real_spans(padding) == expected
    if length > 2:
        broken = padding.clone()
        broken[0, :] = False
        broken[0, [0, length - 1]] = True
        assert real_spans(broken) is None


@pytest.mark.parametrize(
    "padding", [torch.ones(2, 4, dtype=torch.long), torch.ones(2, 2, 4, dtype=torch.bool)]
)
def test_real_spans_names_the_parameter_on_bad_input(padding: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="key_padding must be a bool tensor"):
        real_spans(padding)

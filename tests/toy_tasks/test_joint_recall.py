"""Tests of the joint-recall task of the HAX paper."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_tasks.base import IGNORE_INDEX, NO_POSITION, Batch
from toy_tasks.joint_recall import BOS, SEP, JointRecall
from toy_tasks.registry import get

SMALL = JointRecall(n_contexts=3, n_keys=4, n_values=5)


def sample(task: JointRecall, batch_size: int = 16, seed: int = 0) -> Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


def full_sequence(task: JointRecall, batch: Batch) -> torch.Tensor:
    """``[batch, seq + 1]``: the inputs followed by the final value token (read from metadata)."""
    last = batch.metadata["query_positions"].flatten(1) == task.seq_len - 1
    final = task.first_value + batch.metadata["values"].flatten(1)[last]
    return torch.cat([batch.inputs, final.unsqueeze(1)], dim=1)


def half_triples(task: JointRecall, sequence: torch.Tensor, start: int) -> torch.Tensor:
    """``[batch, C, K, 3]``: (context, key, value) indices of the half starting at ``start``."""
    blocks = sequence[:, start : start + task.n_contexts * task.block_len]
    blocks = blocks.reshape(-1, task.n_contexts, task.block_len)
    contexts = (blocks[:, :, :1] - task.first_context).expand(-1, -1, task.n_keys)
    keys, values = blocks[:, :, 1::2] - task.first_key, blocks[:, :, 2::2] - task.first_value
    return torch.stack([contexts, keys, values], dim=3)


def oracle_accuracy(batch: Batch, positions: torch.Tensor) -> float:
    """Scored accuracy of a model outputting the input token at ``positions`` (``[batch, seq]``)."""
    predictions = batch.inputs.gather(1, positions.clamp(min=0))
    return (predictions == batch.targets)[batch.loss_mask].float().mean().item()


def check_structure(task: JointRecall, batch: Batch) -> None:
    """Every joint-recall invariant of ``batch`` that holds for any seed."""
    c, k = task.n_contexts, task.n_keys
    sequence, table = full_sequence(task, batch), batch.metadata["values"]
    assert (sequence[:, 0] == BOS).all() and (sequence[:, task.second_half_start - 1] == SEP).all()
    for start in (1, task.second_half_start):
        triples = half_triples(task, sequence, start)
        contexts, keys, values = triples.unbind(dim=3)
        assert torch.equal(
            contexts[:, :, 0].sort(dim=1).values, torch.arange(c).expand_as(contexts[:, :, 0])
        )
        assert torch.equal(keys.sort(dim=2).values, torch.arange(k).expand_as(keys)), (
            "each key once per block"
        )
        assert torch.equal(
            values, table.flatten(1).gather(1, (contexts * k + keys).flatten(1)).view_as(values)
        )
    assert ((table >= 0) & (table < task.n_values)).all()
    positions = batch.metadata["value_positions"].flatten(1)
    assert (positions < task.second_half_start).all()
    assert torch.equal(sequence.gather(1, positions), task.first_value + table.flatten(1))
    queries = batch.metadata["query_positions"].flatten(1)
    assert (queries >= task.second_half_start).all()
    key_of_pair = task.first_key + torch.arange(c * k) % k
    assert torch.equal(sequence.gather(1, queries), key_of_pair.expand_as(queries))
    assert torch.equal(sequence.gather(1, queries + 1), task.first_value + table.flatten(1))
    scored = batch.metadata["scored"].flatten(1)
    assert scored.sum(dim=1).eq(task.queries_per_example).all()
    assert torch.equal(batch.loss_mask.gather(1, queries), scored)
    assert batch.loss_mask.sum(dim=1).eq(task.queries_per_example).all()
    relevant = batch.relevant_positions[:, :, 0]
    assert torch.equal(relevant.gather(1, queries), torch.where(scored, positions, NO_POSITION))
    assert (batch.targets[~batch.loss_mask] == IGNORE_INDEX).all()


def test_registered_with_small_defaults() -> None:
    task = get("joint_recall")
    assert isinstance(task, JointRecall) and task.kind == "tokens"
    assert (task.n_contexts, task.n_keys, task.n_values, task.n_queries) == (5, 5, 16, None)
    assert task.seq_len == 1 + 2 * 5 * 11 and task.vocab_size == 3 + 16 + 5 + 5


def test_vocabulary_layout_and_names() -> None:
    names = SMALL.token_names()
    assert len(names) == SMALL.vocab_size == len(set(names)) == 3 + 5 + 4 + 3
    assert names[:3] == ["PAD", "BOS", "SEP"]
    assert names[SMALL.first_value] == "VAL0" and names[SMALL.first_key - 1] == "VAL4"
    assert names[SMALL.first_key] == "KEY0" and names[SMALL.first_context] == "CTX0"
    assert names[-1] == "CTX2"


def test_shapes_and_dtypes() -> None:
    batch = sample(SMALL, batch_size=3)
    assert batch.inputs.shape == batch.targets.shape == (3, SMALL.seq_len) == (3, 55)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64 and batch.inputs.is_contiguous()
    assert batch.relevant_positions.shape == (3, 55, 1)
    for key in ("values", "value_positions", "query_positions", "scored"):
        assert batch.metadata[key].shape == (3, 3, 4), key


def test_second_half_is_the_first_half_table_in_new_orders() -> None:
    batch = sample(SMALL, batch_size=64)
    check_structure(SMALL, batch)
    sequence = full_sequence(SMALL, batch)
    first = half_triples(SMALL, sequence, 1)
    second = half_triples(SMALL, sequence, SMALL.second_half_start)
    assert not torch.equal(first, second), "new context and key orders"
    assert (first[:, :, 0, 0] != first[:, :, 0, 0].sort(dim=1).values).any(), "contexts shuffled"


def test_keys_repeat_across_contexts_with_their_own_values() -> None:
    batch = sample(SMALL, batch_size=64)
    key_tokens = batch.inputs[:, 1 : SMALL.second_half_start - 1]
    counts = torch.stack([(key_tokens == SMALL.first_key + k).sum(1) for k in range(4)], dim=1)
    assert counts.eq(SMALL.n_contexts).all(), "every key once in every context"
    table = batch.metadata["values"]
    assert (table != table[:, :1]).any(dim=1).float().mean() > 0.5, "values depend on the context"


def test_values_are_drawn_with_replacement_uniformly() -> None:
    table = sample(JointRecall(n_contexts=4, n_keys=8), batch_size=256).metadata["values"]
    assert (table.flatten(1).sort(dim=1).values.diff(dim=1) == 0).any(dim=1).all(), "repeats"
    counts = torch.bincount(table.flatten(), minlength=16).double()
    assert counts.numel() == 16 and (counts - counts.mean()).abs().max() < 0.15 * counts.mean()


@pytest.mark.parametrize("n_queries", [None, 1, 5])
def test_scoring_picks_n_queries_second_half_keys(n_queries: int | None) -> None:
    task = SMALL.replace(n_queries=n_queries)
    batch = sample(task, batch_size=128)
    check_structure(task, batch)
    hits = batch.metadata["scored"].flatten(1).sum(dim=0)
    assert (hits > 0).all(), "every (context, key) entry is sometimes scored"


@pytest.mark.parametrize("n_queries", [None, 1])
def test_oracle_reading_the_relevant_position_is_exact(n_queries: int | None) -> None:
    task = JointRecall(n_contexts=4, n_keys=4, n_queries=n_queries)
    batch = sample(task, batch_size=64)
    assert oracle_accuracy(batch, batch.relevant_positions[:, :, 0]) == 1.0
    assert oracle_accuracy(batch, batch.relevant_positions[:, :, 0] + 2) < 0.5


def test_oracle_reading_the_same_key_in_another_context_fails() -> None:
    batch = sample(JointRecall(n_contexts=4, n_keys=4), batch_size=64)
    value_positions = batch.metadata["value_positions"]
    other_context = value_positions.roll(1, dims=1).flatten(1)
    positions = torch.full_like(batch.inputs, NO_POSITION)
    positions.scatter_(1, batch.metadata["query_positions"].flatten(1), other_context)
    accuracy = oracle_accuracy(batch, positions)
    assert 0.0 < accuracy < 0.2, "right only where two contexts share the value (p = 1/16)"


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"n_contexts": 0}, "n_contexts"),
        ({"n_contexts": 1.5}, "n_contexts"),
        ({"n_keys": 0}, "n_keys"),
        ({"n_values": 1}, "n_values"),
        ({"n_queries": 0}, "n_queries"),
        ({"n_queries": 26}, "n_queries"),
    ],
)
def test_bad_parameters_name_the_field(overrides: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        JointRecall(**overrides)


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SMALL.sample(0, torch.Generator())


def test_render_shows_blocks_and_scored_keys() -> None:
    batch = sample(SMALL, batch_size=2)
    text = SMALL.render(batch, index=1)
    c, k = 2, 1
    query = int(batch.metadata["query_positions"][1, c, k])
    value = int(batch.metadata["values"][1, c, k])
    source = int(batch.metadata["value_positions"][1, c, k])
    assert f"pos {query:4d}  KEY{k} -> VAL{value}  (reads pos {source})" in text
    assert "   0 | BOS" in text and f"{SMALL.second_half_start - 1:4d} | SEP" in text
    assert len(text.splitlines()) <= 25
    big = JointRecall(n_contexts=16, n_keys=16)
    assert len(big.render(sample(big, batch_size=1)).splitlines()) <= 25


@st.composite
def configs(draw: st.DrawFn) -> JointRecall:
    n_contexts, n_keys = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return JointRecall(
        n_contexts=n_contexts,
        n_keys=n_keys,
        n_values=draw(st.integers(2, 20)),
        n_queries=draw(st.none() | st.integers(1, n_contexts * n_keys)),
    )


@settings(max_examples=25, deadline=None)
@given(task=configs(), batch_size=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_structure_and_oracle_hold_for_any_config(
    task: JointRecall, batch_size: int, seed: int
) -> None:
    batch = sample(task, batch_size=batch_size, seed=seed)
    check_structure(task, batch)
    assert oracle_accuracy(batch, batch.relevant_positions[:, :, 0]) == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_gives_the_same_invariants() -> None:
    batch = SMALL.sample(32, torch.Generator(device="cuda").manual_seed(0))
    again = SMALL.sample(32, torch.Generator(device="cuda").manual_seed(0))
    assert batch.inputs.is_cuda and batch.metadata["values"].is_cuda
    assert torch.equal(batch.inputs, again.inputs)
    check_structure(SMALL, batch.to("cpu"))
    assert oracle_accuracy(batch, batch.relevant_positions[:, :, 0]) == 1.0

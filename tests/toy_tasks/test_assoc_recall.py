"""Tests of the associative-recall task (Zoology's MQAR and its single-query form)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_tasks.assoc_recall import AssociativeRecall
from toy_tasks.base import IGNORE_INDEX, Batch
from toy_tasks.registry import get

SMALL = AssociativeRecall(vocab_size=64, seq_len=40, n_pairs=6)


def sample(task: AssociativeRecall, batch_size: int = 16, seed: int = 0) -> Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


def oracle_accuracy(batch: Batch, shift: int = 0) -> float:
    """Scored accuracy of a model outputting the token at the relevant position + ``shift``."""
    read = (batch.relevant_positions[:, :, 0] + shift).clamp(0, batch.seq_len - 1)
    predictions = batch.inputs.gather(1, read)
    return (predictions == batch.targets)[batch.loss_mask].float().mean().item()


def gap_law(task: AssociativeRecall) -> torch.Tensor:
    """Zoology's gap distribution ``p(g) = a (g + 1)^(a - 1)``, normalised: ``[n_gap_slots]``."""
    ranks = torch.arange(1, task.n_gap_slots + 1, dtype=torch.float64)
    p = task.power_a * ranks ** (task.power_a - 1)
    return p / p.sum()


def binned(distribution: torch.Tensor) -> torch.Tensor:
    """``distribution`` over gaps summed in the bins 0, 1, 2-3, 4-7, ..., 64+."""
    bins = torch.bucketize(
        torch.arange(distribution.numel()), torch.tensor([1, 2, 4, 8, 16, 32, 64]), right=True
    )
    return torch.zeros(8, dtype=torch.float64).index_add_(0, bins, distribution.double())


def check_structure(task: AssociativeRecall, batch: Batch) -> None:
    """Every MQAR invariant of ``batch`` that holds for any seed."""
    n, q, half = task.n_pairs, task.queries_per_example, task.vocab_size // 2
    keys, values = batch.metadata["keys"], batch.metadata["values"]
    pairs, positions = batch.metadata["query_pairs"], batch.metadata["query_positions"]
    assert torch.equal(batch.inputs[:, 0 : 2 * n : 2], keys)
    assert torch.equal(batch.inputs[:, 1 : 2 * n : 2], values)
    assert ((keys >= 1) & (keys < half)).all() and (
        (values >= half) & (values < task.vocab_size)
    ).all()
    for tokens in (keys, values):
        assert (tokens.sort(dim=1).values.diff(dim=1) > 0).all(), "distinct within an example"
    assert (pairs.diff(dim=1) > 0).all() and pairs.shape == (batch.batch_size, q)
    assert (positions >= 2 * n).all() and (positions < task.seq_len).all()
    assert (positions % 2 == 0).all(), "queries at even offsets after the context"
    assert (positions.sort(dim=1).values.diff(dim=1) > 0).all()
    assert torch.equal(batch.inputs.gather(1, positions), keys.gather(1, pairs))
    assert torch.equal(batch.targets.gather(1, positions), values.gather(1, pairs))
    assert torch.equal(batch.relevant_positions[:, :, 0].gather(1, positions), 2 * pairs + 1)
    assert batch.loss_mask.sum(dim=1).eq(q).all()
    assert (batch.targets[~batch.loss_mask] == IGNORE_INDEX).all()


def test_registered_with_cpu_friendly_defaults() -> None:
    task = get("assoc_recall")
    assert isinstance(task, AssociativeRecall) and task.kind == "tokens"
    assert (task.vocab_size, task.seq_len, task.n_pairs, task.power_a) == (256, 64, 8, 0.01)
    assert task.queries_per_example == 8


def test_shapes_and_dtypes() -> None:
    batch = sample(SMALL, batch_size=3)
    assert batch.inputs.shape == batch.targets.shape == (3, 40)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert batch.relevant_positions.shape == (3, 40, 1)
    assert batch.metadata["keys"].shape == batch.metadata["values"].shape == (3, 6)
    assert batch.metadata["query_positions"].shape == (3, 6)


def test_mqar_queries_every_key_once() -> None:
    batch = sample(SMALL, batch_size=64)
    check_structure(SMALL, batch)
    assert torch.equal(batch.metadata["query_pairs"], torch.arange(6).expand(64, 6))
    queried = batch.inputs.gather(1, batch.metadata["query_positions"])
    assert torch.equal(queried.sort(dim=1).values, batch.metadata["keys"].sort(dim=1).values)


def test_single_query_scores_one_random_pair() -> None:
    task = SMALL.replace(n_queries=1)
    batch = sample(task, batch_size=256)
    check_structure(task, batch)
    counts = torch.bincount(batch.metadata["query_pairs"][:, 0], minlength=6)
    assert (counts > 20).all(), "every pair gets queried"


def test_filler_is_uniform_over_the_whole_vocabulary() -> None:
    batch = sample(SMALL, batch_size=256)
    after_context = batch.inputs[:, 12:][~batch.loss_mask[:, 12:]]
    counts = torch.bincount(after_context, minlength=64)
    assert counts.numel() == 64 and (counts > 0).all(), "token 0, keys and values all occur"
    assert counts.max() < 2 * counts.float().mean()


@pytest.mark.parametrize("power_a", [0.01, 1.0])
def test_gaps_follow_zoology_power_law_drawn_in_turn(power_a: float) -> None:
    """Pair 0 takes the first draw from ``p``; pair 1 the second draw, without replacement."""
    task = AssociativeRecall(vocab_size=300, seq_len=256, n_pairs=2, power_a=power_a)
    gaps = (sample(task, batch_size=20_000).metadata["query_positions"] - 4) // 2
    p = gap_law(task)
    # P(second draw = g) = sum over i != g of p_i p_g / (1 - p_i).
    second = p * ((p / (1 - p)).sum() - p / (1 - p))
    for column, expected in ((0, p), (1, second)):
        empirical = torch.bincount(gaps[:, column], minlength=task.n_gap_slots) / 20_000
        assert (binned(empirical) - binned(expected)).abs().sum() < 0.03, column
    if power_a < 1:
        assert (gaps < 10).float().mean() > 0.4, "short gaps dominate"


@pytest.mark.parametrize("n_queries", [None, 1, 3])
def test_oracle_reading_the_relevant_position_is_exact(n_queries: int | None) -> None:
    batch = sample(SMALL.replace(n_queries=n_queries), batch_size=64)
    assert oracle_accuracy(batch) == 1.0
    assert oracle_accuracy(batch, shift=2) < 0.1, "the next pair's value is wrong"
    assert oracle_accuracy(batch, shift=-1) == 0.0, "the key itself is wrong"


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"n_pairs": 0}, "n_pairs"),
        ({"n_pairs": 2.5}, "n_pairs"),
        ({"vocab_size": 16, "seq_len": 12, "n_pairs": 8}, "n_pairs"),
        ({"n_queries": 0}, "n_queries"),
        ({"n_queries": 9}, "n_queries"),
        ({"power_a": 0.0}, "power_a"),
        ({"power_a": -1.0}, "power_a"),
        ({"power_a": float("nan")}, "power_a"),
        ({"seq_len": 31}, "seq_len"),
        ({"seq_len": 63}, "seq_len"),
        ({"n_pairs": 8, "n_queries": 8, "seq_len": 30}, "seq_len"),
        ({"vocab_size": 64}, "vocab_size"),
        ({"vocab_size": 3}, "vocab_size"),
    ],
)
def test_bad_parameters_name_the_field(overrides: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        AssociativeRecall(**overrides)


def test_seq_len_minimum_counts_queries() -> None:
    AssociativeRecall(seq_len=20, n_pairs=8, n_queries=2, vocab_size=32)
    with pytest.raises(ValueError, match=r"seq_len must be in \[20, inf\]"):
        AssociativeRecall(seq_len=18, n_pairs=8, n_queries=2, vocab_size=32)


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SMALL.sample(0, torch.Generator())


def test_render_marks_queries_with_target_and_source() -> None:
    batch = sample(SMALL, batch_size=2)
    text = SMALL.render(batch, index=1)
    keys, values = batch.metadata["keys"][1], batch.metadata["values"][1]
    position = int(batch.metadata["query_positions"][1, 2])
    key, value = int(keys[2]), int(values[2])
    assert f"K{key} V{value}" in text
    assert f"pos {position:4d}  K{key} -> V{value}  (reads pos 5)" in text
    assert "~" in text and len(text.splitlines()) <= 25
    big = AssociativeRecall(vocab_size=8192, seq_len=1024, n_pairs=256)
    assert len(big.render(sample(big, batch_size=1)).splitlines()) <= 25


@st.composite
def configs(draw: st.DrawFn) -> AssociativeRecall:
    n_pairs = draw(st.integers(1, 6))
    n_queries = draw(st.none() | st.integers(1, n_pairs))
    queries = n_pairs if n_queries is None else n_queries
    seq_len = 2 * (n_pairs + queries + draw(st.integers(0, 8)))
    return AssociativeRecall(
        vocab_size=seq_len + 1 + draw(st.integers(0, 40)),
        seq_len=seq_len,
        n_pairs=n_pairs,
        n_queries=n_queries,
        power_a=draw(st.sampled_from([0.01, 0.5, 1.0, 3.0])),
    )


@settings(max_examples=25, deadline=None)
@given(task=configs(), batch_size=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_structure_and_oracle_hold_for_any_config(
    task: AssociativeRecall, batch_size: int, seed: int
) -> None:
    batch = sample(task, batch_size=batch_size, seed=seed)
    check_structure(task, batch)
    assert oracle_accuracy(batch) == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_gives_the_same_invariants() -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch = SMALL.sample(32, generator)
    assert batch.inputs.is_cuda and batch.metadata["query_positions"].is_cuda
    again = SMALL.sample(32, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(batch.inputs, again.inputs)
    check_structure(SMALL, batch.to("cpu"))
    assert oracle_accuracy(batch) == 1.0

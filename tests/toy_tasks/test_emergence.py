"""Tests of the single-location regression task of the emergence paper."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_tasks.base import NO_POSITION, Batch
from toy_tasks.emergence import SingleLocationRegression
from toy_tasks.registry import get

SMALL = SingleLocationRegression(seq_len=12, d=5, burstiness=3)


def sample(task: SingleLocationRegression, batch_size: int = 8, seed: int = 0) -> Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


def oracle(task: SingleLocationRegression, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """``W* x`` read at ``positions [batch]`` -> ``[batch, d]``."""
    x = batch.inputs[torch.arange(batch.batch_size), positions, : task.d]
    return x @ task.target_matrix().T


def first_irrelevant(batch: Batch) -> torch.Tensor:
    """``[batch]`` the smallest position that is not relevant to the scored prediction."""
    relevant = batch.relevance_mask()[:, -1]
    return (~relevant).int().argmax(dim=1)


@pytest.mark.parametrize(("position", "d_input"), [("last", 5), ("random", 6)])
def test_shapes_and_dtypes(position: str, d_input: int) -> None:
    task = SingleLocationRegression(seq_len=12, d=5, burstiness=2, position=position)
    batch = sample(task, batch_size=3)
    assert task.d_input == d_input and task.d_output == 5
    assert batch.inputs.shape == (3, 12, d_input) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (3, 12, 5) and batch.targets.dtype == torch.float32
    assert batch.loss_mask.shape == (3, 12) and batch.relevant_positions.shape == (3, 12, 2)
    assert batch.metadata["relevant"].shape == (3, 2) and batch.metadata["special"].shape == (3,)


def test_only_the_last_position_is_scored() -> None:
    batch = sample(SMALL)
    assert torch.all(batch.loss_mask[:, -1]) and not torch.any(batch.loss_mask[:, :-1])
    assert torch.all(batch.targets[:, :-1] == 0)
    assert torch.all(batch.relevant_positions[:, :-1] == NO_POSITION)
    assert torch.equal(batch.relevant_positions[:, -1], batch.metadata["relevant"])


def test_last_position_layout_with_burstiness() -> None:
    batch = sample(SMALL, batch_size=64)
    relevant = batch.metadata["relevant"]
    # The toy model's attention is indexed by position: the copies fill the last B positions.
    last_b = torch.arange(SMALL.seq_len - SMALL.burstiness, SMALL.seq_len)
    assert torch.equal(relevant, last_b.expand(64, -1))
    copies = batch.inputs[torch.arange(64)[:, None], relevant]
    assert torch.all(copies == copies[:, :1])
    assert not torch.equal(copies[0, 0], copies[1, 0])  # the relevant vector changes per sequence


def test_random_position_is_marked() -> None:
    task = SingleLocationRegression(seq_len=12, d=5, burstiness=2, position="random")
    batch = sample(task, batch_size=64)
    marker = batch.inputs[:, :, -1]
    assert torch.equal(marker.bool(), batch.relevance_mask()[:, -1])
    assert len(set(batch.metadata["relevant"][:, -1].tolist())) > 3


def test_token_and_matrix_statistics() -> None:
    task = SingleLocationRegression(seq_len=64, d=64)
    batch = sample(task, batch_size=64)
    assert batch.inputs.var().item() == pytest.approx(1 / 64, rel=0.05)
    assert task.target_matrix().var().item() == pytest.approx(1 / 64, rel=0.1)


def test_target_matrix_is_fixed_by_task_seed_only() -> None:
    task = SingleLocationRegression(d=6)
    assert torch.equal(task.target_matrix(), SingleLocationRegression(d=6).target_matrix())
    other = SingleLocationRegression(d=6, task_seed=1)
    assert not torch.equal(task.target_matrix(), other.target_matrix())
    # The fixed draws use their own generator: the data stream does not depend on task_seed.
    assert torch.equal(sample(task).inputs, sample(other).inputs)
    assert not torch.equal(sample(task).targets, sample(other).targets)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_cross_sample_extremes(p: float) -> None:
    task = SingleLocationRegression(seq_len=12, d=5, cross_sample_p=p)
    batch = sample(task, batch_size=16)
    assert torch.all(batch.metadata["special"] == bool(p))
    is_special = (batch.inputs[:, -1] == task.special_vector()).all(dim=-1)
    assert torch.all(is_special == bool(p))


def test_cross_sample_frequency() -> None:
    task = SingleLocationRegression(seq_len=4, d=3, cross_sample_p=0.3)
    special = sample(task, batch_size=4000).metadata["special"]
    assert special.float().mean().item() == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("position", ["last", "random"])
def test_oracle_reads_the_relevant_position(position: str) -> None:
    task = SingleLocationRegression(seq_len=12, d=5, burstiness=2, position=position)
    batch = sample(task, batch_size=16)
    for copy in range(2):
        prediction = oracle(task, batch, batch.metadata["relevant"][:, copy])
        torch.testing.assert_close(prediction, batch.targets[:, -1], atol=1e-6, rtol=0)
    wrong = oracle(task, batch, first_irrelevant(batch))
    assert (wrong - batch.targets[:, -1]).square().sum(dim=-1).min() > 1e-4


def test_render_is_short_and_shows_the_relevant_positions() -> None:
    task = SingleLocationRegression(burstiness=2, position="random")
    batch = sample(task, batch_size=2)
    text = task.render(batch, index=1)
    assert len(text.splitlines()) <= 25
    assert str(batch.metadata["relevant"][1].tolist()) in text and "scored" in text


def test_registry_and_dict_round_trip() -> None:
    task = get("single_location", seq_len=8, burstiness=2, position="random")
    assert task == SingleLocationRegression(seq_len=8, burstiness=2, position="random")
    fields = {key: value for key, value in task.to_dict().items() if key != "name"}
    assert SingleLocationRegression(**fields) == task


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq_len", 0),
        ("d", 0),
        ("burstiness", 0),
        ("burstiness", 13),
        ("cross_sample_p", -0.1),
        ("cross_sample_p", 1.5),
        ("position", "first"),
        ("task_seed", -1),
    ],
)
def test_bad_parameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SingleLocationRegression(**{"seq_len": 12, field: value})


@st.composite
def small_tasks(draw: st.DrawFn) -> SingleLocationRegression:
    seq_len = draw(st.integers(1, 10))
    return SingleLocationRegression(
        seq_len=seq_len,
        d=draw(st.integers(1, 6)),
        burstiness=draw(st.integers(1, seq_len)),
        cross_sample_p=draw(st.sampled_from([0.0, 0.5, 1.0])),
        position=draw(st.sampled_from(["last", "random"])),
        task_seed=draw(st.integers(0, 3)),
    )


@settings(max_examples=25, deadline=None)
@given(task=small_tasks(), batch_size=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_property_shapes_relevance_and_oracle(
    task: SingleLocationRegression, batch_size: int, seed: int
) -> None:
    batch = sample(task, batch_size, seed)
    assert batch.inputs.shape == (batch_size, task.seq_len, task.d_input)
    assert batch.targets.shape == (batch_size, task.seq_len, task.d)
    has_relevance = (batch.relevant_positions != NO_POSITION).any(dim=-1)
    assert torch.equal(has_relevance, batch.loss_mask)
    assert torch.all(batch.relevance_mask()[:, -1].sum(dim=-1) == task.burstiness)
    for copy in range(task.burstiness):
        prediction = oracle(task, batch, batch.metadata["relevant"][:, copy])
        torch.testing.assert_close(prediction, batch.targets[:, -1], atol=1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_gives_cuda_batch() -> None:
    task = SingleLocationRegression(seq_len=12, d=5, burstiness=2, cross_sample_p=0.5)
    batch = task.sample(4, torch.Generator(device="cuda").manual_seed(0))
    assert batch.device.type == "cuda" and batch.metadata["relevant"].device.type == "cuda"
    prediction = batch.inputs[torch.arange(4, device="cuda"), -1] @ task.target_matrix("cuda").T
    torch.testing.assert_close(prediction, batch.targets[:, -1])

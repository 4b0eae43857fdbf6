"""Tests of the in-context linear-regression task and its curriculum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_tasks.base import NO_POSITION, Batch
from toy_tasks.linear_regression import Curriculum, LinearRegressionICL, Schedule
from toy_tasks.registry import get

SMALL = LinearRegressionICL(d=4, n_points=10)


def sample(task: LinearRegressionICL, batch_size: int = 8, seed: int = 0) -> Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


def oracle_prediction(tokens: np.ndarray, positions: list[int], d: int) -> tuple[float, np.ndarray]:
    """Least squares reading only ``positions`` of ``tokens [seq, d + 1]``: the last one is the
    query x-token, the earlier ones alternate x-token, y-token. Returns (prediction, w_hat)."""
    query = tokens[positions[-1], :d]
    context = tokens[positions[:-1]]
    x, y = context[0::2, :d], context[1::2, 0]
    w_hat = np.linalg.lstsq(x, y, rcond=None)[0] if len(y) else np.zeros(d)
    return float(query @ w_hat), w_hat


def relevant_list(batch: Batch, index: int, pos: int) -> list[int]:
    row = batch.relevant_positions[index, pos]
    return row[row != NO_POSITION].tolist()


def test_shapes_and_dtypes() -> None:
    batch = sample(SMALL, batch_size=3)
    assert SMALL.seq_len == 20 and SMALL.d_input == 5 and SMALL.d_output == 1
    assert batch.inputs.shape == (3, 20, 5) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (3, 20, 1) and batch.targets.dtype == torch.float32
    assert batch.loss_mask.shape == (3, 20) and batch.loss_mask.dtype == torch.bool
    assert batch.relevant_positions.shape == (3, 20, 19)
    assert batch.relevant_positions.dtype == torch.int64
    assert batch.metadata["w"].shape == (3, 4)


def test_token_layout() -> None:
    batch = sample(SMALL)
    x_tokens, y_tokens = batch.inputs[:, 0::2], batch.inputs[:, 1::2]
    assert torch.all(x_tokens[:, :, -1] == 0) and torch.all(y_tokens[:, :, -1] == 1)
    assert torch.all(y_tokens[:, :, 1:-1] == 0)
    expected_y = torch.einsum("bnd,bd->bn", x_tokens[:, :, :-1], batch.metadata["w"])
    torch.testing.assert_close(y_tokens[:, :, 0], expected_y)


def test_targets_and_loss_mask() -> None:
    batch = sample(SMALL)
    assert torch.all(batch.loss_mask[:, 0::2]) and not torch.any(batch.loss_mask[:, 1::2])
    assert torch.equal(batch.targets[:, 0::2, 0], batch.inputs[:, 1::2, 0])
    assert torch.all(batch.targets[:, 1::2] == 0)


def test_noise_has_the_requested_scale() -> None:
    batch = sample(LinearRegressionICL(d=4, n_points=50, noise=0.5), batch_size=64)
    x, y = batch.inputs[:, 0::2, :-1], batch.inputs[:, 1::2, 0]
    residual = y - torch.einsum("bnd,bd->bn", x, batch.metadata["w"])
    assert residual.std().item() == pytest.approx(0.5, rel=0.1)


def test_d_active_zeroes_trailing_coordinates() -> None:
    batch = sample(LinearRegressionICL(d=6, n_points=5, d_active=2))
    x = batch.inputs[:, 0::2, :-1]
    assert torch.all(x[:, :, 2:] == 0) and torch.all(x[:, :, :2] != 0)


def test_relevant_positions_are_the_prefix_and_the_query() -> None:
    batch = sample(SMALL, batch_size=2)
    for pos in range(SMALL.seq_len):
        expected = list(range(pos + 1)) if pos % 2 == 0 else []
        assert relevant_list(batch, 1, pos) == expected
    mask = batch.relevance_mask()
    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    assert torch.equal(mask[0, 0::2], causal[0::2]) and not torch.any(mask[:, 1::2])


def test_oracle_on_relevant_positions_solves_the_task() -> None:
    batch = sample(SMALL, batch_size=4)
    tokens = batch.inputs.numpy().astype(np.float64)
    for index in range(4):
        w = batch.metadata["w"][index].numpy()
        for pos in range(2 * SMALL.d, SMALL.seq_len, 2):
            prediction, w_hat = oracle_prediction(
                tokens[index], relevant_list(batch, index, pos), 4
            )
            assert prediction == pytest.approx(batch.targets[index, pos, 0].item(), abs=1e-4)
            np.testing.assert_allclose(w_hat, w, atol=1e-4)


def test_oracle_on_shifted_positions_fails() -> None:
    batch = sample(SMALL, batch_size=4)
    tokens = batch.inputs.numpy().astype(np.float64)
    errors = [
        oracle_prediction(tokens[index], [p + 1 for p in relevant_list(batch, index, pos)], 4)[0]
        - batch.targets[index, pos, 0].item()
        for index in range(4)
        for pos in range(2 * SMALL.d, SMALL.seq_len, 2)
    ]
    assert np.mean(np.square(errors)) > 0.1


def test_render_is_short_and_names_the_scored_positions() -> None:
    task = LinearRegressionICL()
    text = task.render(sample(task, batch_size=2), index=1)
    assert len(text.splitlines()) <= 25
    assert "example 1" in text and "scored" in text and "..." in text


def test_registry_and_dict_round_trip() -> None:
    task = get("linear_regression", d=3, d_active=2)
    assert task == LinearRegressionICL(d=3, d_active=2)
    fields = {key: value for key, value in task.to_dict().items() if key != "name"}
    assert LinearRegressionICL(**fields) == task


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d", 0),
        ("n_points", 0),
        ("noise", -0.1),
        ("noise", float("nan")),
        ("d_active", 0),
        ("d_active", 5),
        ("d", 2.5),
    ],
)
def test_bad_parameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LinearRegressionICL(**{"d": 4, field: value})


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        sample(SMALL, batch_size=0)


def test_schedule_values() -> None:
    schedule = Schedule(start=5, end=20, increment=1, interval=2000)
    values = [schedule.value_at(step) for step in (0, 1999, 2000, 4001, 30_000, 10**6)]
    assert values == [5, 5, 6, 7, 20, 20]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("interval", {"interval": 0}),
        ("end", {"end": 4}),
        ("increment", {"increment": -1}),
        ("start", {"start": 0}),
    ],
)
def test_bad_schedule_names_the_field(field: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=field):
        Schedule(**{"start": 5, "end": 20, "increment": 1, "interval": 10, **kwargs})


def test_garg_curriculum() -> None:
    curriculum, base = Curriculum.garg(), LinearRegressionICL()
    assert curriculum.task_at(0, base) == LinearRegressionICL(d_active=5, n_points=11)
    assert curriculum.task_at(4000, base) == LinearRegressionICL(d_active=7, n_points=15)
    assert curriculum.task_at(100_000, base) == LinearRegressionICL(d_active=20, n_points=41)
    with pytest.raises(ValueError, match="d_active"):
        curriculum.task_at(100_000, LinearRegressionICL(d=10))
    with pytest.raises(ValueError, match="step"):
        curriculum.task_at(-1, base)


@st.composite
def small_tasks(draw: st.DrawFn) -> LinearRegressionICL:
    d = draw(st.integers(1, 4))
    return LinearRegressionICL(
        d=d,
        n_points=draw(st.integers(1, 9)),
        noise=draw(st.sampled_from([0.0, 0.3])),
        d_active=draw(st.none() | st.integers(1, d)),
    )


@settings(max_examples=25, deadline=None)
@given(task=small_tasks(), batch_size=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_property_shapes_and_relevance(
    task: LinearRegressionICL, batch_size: int, seed: int
) -> None:
    batch = sample(task, batch_size, seed)
    seq = task.seq_len
    assert batch.inputs.shape == (batch_size, seq, task.d_input)
    assert batch.targets.shape == (batch_size, seq, 1)
    has_relevance = (batch.relevant_positions != NO_POSITION).any(dim=-1)
    assert torch.equal(has_relevance, batch.loss_mask)
    assert torch.all(batch.relevance_mask().sum(dim=-1)[:, 0::2] == torch.arange(1, seq, 2))


@settings(max_examples=25, deadline=None)
@given(task=small_tasks(), seed=st.integers(0, 2**31))
def test_property_oracle_is_exact_once_enough_pairs(task: LinearRegressionICL, seed: int) -> None:
    task = LinearRegressionICL(task.d, task.n_points + 2 * task.d, 0.0, task.d_active)
    batch = sample(task, 2, seed)
    tokens = batch.inputs.numpy().astype(np.float64)
    for pos in range(2 * task.active_dims, task.seq_len, 2):
        prediction, _ = oracle_prediction(tokens[1], relevant_list(batch, 1, pos), task.d)
        assert prediction == pytest.approx(batch.targets[1, pos, 0].item(), abs=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_gives_cuda_batch() -> None:
    batch = SMALL.sample(4, torch.Generator(device="cuda").manual_seed(0))
    assert batch.device.type == "cuda"
    assert all(t.device.type == "cuda" for t in (batch.targets, batch.relevant_positions))
    assert batch.metadata["w"].device.type == "cuda"

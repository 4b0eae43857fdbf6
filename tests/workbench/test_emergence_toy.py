"""The emergence paper's toy model (`workbench.emergence_toy`): its expected loss is the task's
loss, gradient descent follows the closed-form early dynamics, the leading-order plateau holds,
and it trains through `workbench.train` like any model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import toy_tasks
from workbench.analysis import emergence_time
from workbench.emergence_toy import EmergenceToyConfig, build_emergence_toy
from workbench.emergence_toy.theory import (
    early_dynamics,
    expected_loss,
    gradient_flow,
    initial_loss,
    plateau_estimate,
)
from workbench.models import build_model
from workbench.train import TrainConfig, load_model, task_loss, train


def single(**changes) -> toy_tasks.SingleLocationRegression:
    return toy_tasks.get(
        "single_location", **{"seq_len": 16, "d": 8, "position": "last", **changes}
    )


def test_the_model_starts_as_the_zero_predictor_and_attends_as_configured() -> None:
    task = single(burstiness=3)
    free = build_model(task, EmergenceToyConfig())
    shared = build_model(task, EmergenceToyConfig(repeat_logits="shared"))
    batch = task.sample(4, torch.Generator().manual_seed(0))
    assert free(batch.inputs).shape == (4, 16, 8) and not free(batch.inputs).any()
    assert free.logits.shape == (16,) and shared.logits.shape == (14,)
    with torch.no_grad():
        shared.logits[-1] = 2.0
    weights = shared.attention()
    assert torch.allclose(weights[-3:], weights[-1].expand(3)) and weights[0] < weights[-1]
    assert float(initial_loss(task)) == pytest.approx(0.5, abs=0.1)


def test_expected_loss_is_the_mean_task_loss() -> None:
    """The closed form against the task's own samples (in-context and cross-sample repetition)."""
    task = single(burstiness=2, cross_sample_p=0.3)
    model = build_emergence_toy(task, EmergenceToyConfig()).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.W.copy_(torch.randn(8, 8, generator=generator, dtype=torch.float64) / 3)
        model.logits.copy_(torch.randn(16, generator=generator, dtype=torch.float64))
    batch = task.sample(200_000, torch.Generator().manual_seed(2))
    batch = toy_tasks.Batch(
        batch.inputs.double(), batch.targets.double(), batch.loss_mask, batch.relevant_positions
    )
    with torch.no_grad():
        sampled = task_loss(task, model(batch.inputs), batch)
        exact = expected_loss(model, task)
    assert float(sampled) == pytest.approx(float(exact), rel=0.01)
    with torch.no_grad():  # the test loss (p = 0) is another number
        assert float(expected_loss(model, task, 0.0)) != pytest.approx(float(exact), rel=0.01)


@pytest.mark.parametrize(("burstiness", "repeat_logits"), [(1, "free"), (2, "free"), (2, "shared")])
def test_gradient_descent_follows_the_closed_form_early_dynamics(
    burstiness: int, repeat_logits: str
) -> None:
    """Small-step gradient descent on the expected loss against `early_dynamics` while attention
    is still nearly uniform (Delta a < 0.05: the closed form neglects its change)."""
    task = single(seq_len=16, d=8, burstiness=burstiness)
    model = build_emergence_toy(task, EmergenceToyConfig(repeat_logits=repeat_logits)).double()
    lr, steps = 0.02, 300  # time t = lr * steps = 6
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    target = task.target_matrix().double()
    times, cs, deltas = [], [], []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        expected_loss(model, task).backward()
        optimizer.step()
        if step % 75 == 0:
            logits = model.attention_logits().detach()
            times.append(lr * step)
            cs.append(float((model.W * target).sum() / target.square().sum()))
            deltas.append(float(logits[-1] - logits[0]))
    c, delta = early_dynamics(np.array(times), task, repeat_logits)
    assert max(deltas) < 0.08 and min(deltas) > 0
    np.testing.assert_allclose(cs, c, rtol=0.015)
    np.testing.assert_allclose(deltas, delta, rtol=0.02)
    # W stays on the direction of W* (the reduced dynamics' premise).
    residual = model.W.detach() - cs[-1] * target
    assert residual.norm() < 1e-6 * model.W.norm() + 1e-12


def test_the_leading_order_plateau_brackets_gradient_flow() -> None:
    """B = 1: the escape time sqrt(pi/2) sqrt(d) T, the emergence time (loss at 0.2 x 0.5) a
    little later; shared logits take the 1/B, free ones the 1/sqrt(B) law."""
    times = {}
    for burstiness, repeat in ((1, "free"), (4, "free"), (4, "shared")):
        task = single(seq_len=32, d=16, burstiness=burstiness)
        steps, losses = gradient_flow(
            task, EmergenceToyConfig(repeat_logits=repeat), steps=400, until=0.05
        )
        times[burstiness, repeat] = emergence_time(
            steps, losses, initial=0.5, smoothing=1, persist=1
        )
    estimate = plateau_estimate(32, 16, 1)
    assert estimate == pytest.approx(math.sqrt(math.pi / 2) * 4 * 32)
    assert estimate < times[1, "free"] < 1.4 * estimate
    assert times[4, "shared"] < times[4, "free"] < times[1, "free"]
    free_ratio = times[1, "free"] / times[4, "free"]
    shared_ratio = times[1, "free"] / times[4, "shared"]
    assert free_ratio < 2.3 < shared_ratio  # ~sqrt(4) = 2 vs ~4, up to the descent time


def test_the_toy_model_trains_through_the_training_loop(tmp_path) -> None:
    config = TrainConfig.from_dict(
        {
            "task": {"name": "single_location", "seq_len": 8, "d": 4, "position": "last"},
            "model": {"architecture": "emergence_toy"},
            "optimizer": "sgd",
            "lr": 1.0,
            "steps": 40,
            "eval_every": 20,
            "eval_batch_size": 64,
            "device": "cpu",
        }
    )
    assert isinstance(config.model, EmergenceToyConfig)
    assert TrainConfig.from_dict(config.to_dict()) == config
    first = train(config, tmp_path / "a", progress=False)
    second = train(config, tmp_path / "b", progress=False)
    assert first.metrics["eval_loss"] == second.metrics["eval_loss"] < 0.45
    assert not (tmp_path / "a" / "traces").exists()  # no attention layers to trace
    model, _, step = load_model(tmp_path / "a")
    assert step == 40 and torch.equal(model.W, first.model.W)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"task_overrides": {"position": "random"}}, "position"),
        ({"task": "linear_regression", "task_overrides": {}}, "task"),
        ({"eval_metrics": ["attention"]}, "eval_metrics"),
        ({"sparse": {"method": "top_k", "hparams": {"k": 2}}}, "sparse"),
    ],
)
def test_the_toy_model_refuses_what_it_cannot_do(changes: dict, field: str) -> None:
    base = {
        "task": "single_location",
        "task_overrides": {"seq_len": 8, "d": 4, "position": "last"},
        "model": EmergenceToyConfig(),
    }
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{**base, **changes})
    with pytest.raises(ValueError, match="repeat_logits"):
        EmergenceToyConfig(repeat_logits="tied")
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig.from_dict({"model": {"architecture": "mamba"}})

"""Bad input gets a clear error naming the parameter, never a crash deep inside: one regression
test per cause found by fuzzing the public constructors (`test_fuzz_constructors` holds the
property tests)."""

from __future__ import annotations

import pytest
import torch

from toy_tasks import AssociativeRecall, LinearRegressionICL, SingleLocationRegression
from toy_tasks.base import check_float
from workbench.train import TrainConfig

INF = float("inf")


def sample(task) -> None:
    task.sample(2, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- finite floats
def test_check_float_rejects_infinities() -> None:
    with pytest.raises(ValueError, match="noise must be a finite number"):
        check_float("noise", INF, 0.0)
    with pytest.raises(ValueError, match="below must be a finite number"):
        check_float("below", -INF, -INF)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        check_float("alpha", 10**400, 0.0)  # an int beyond the float range


def test_infinite_noise_is_rejected_not_sampled() -> None:
    with pytest.raises(ValueError, match="noise"):
        sample(LinearRegressionICL(noise=INF))


def test_infinite_power_a_is_rejected_not_sampled() -> None:
    with pytest.raises(ValueError, match="power_a"):
        sample(AssociativeRecall(power_a=INF))


def test_infinite_learning_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=INF)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=INF)


def test_finite_floats_that_overflow_later_are_bounded() -> None:
    # power_a 200 makes the gap weights (g + 1) ** 199 overflow float64 on long sequences.
    with pytest.raises(ValueError, match=r"power_a must be in \[0.0, 16.0\]"):
        sample(AssociativeRecall(vocab_size=4096, seq_len=2048, power_a=200.0))
    with pytest.raises(ValueError, match="noise"):
        sample(LinearRegressionICL(noise=1e300))
    AssociativeRecall(power_a=16.0).sample(2, torch.Generator().manual_seed(0))


def test_seeds_beyond_torch_generators_are_rejected() -> None:
    with pytest.raises(ValueError, match="task_seed"):
        sample(SingleLocationRegression(task_seed=2**64))
    SingleLocationRegression(task_seed=2**64 - 1).target_matrix()

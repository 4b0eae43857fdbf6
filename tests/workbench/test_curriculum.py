"""Garg's curriculum in training (`TrainConfig.curriculum`) and the evaluation task
(`TrainConfig.eval_task_overrides`)."""

from __future__ import annotations

import pytest
import torch

import toy_tasks
from toy_tasks import Curriculum, Schedule
from workbench.models import ModelConfig
from workbench.runs import read_metrics
from workbench.train import TrainConfig, TrainingData, train

CURRICULUM = {
    "dims": {"start": 2, "end": 4, "increment": 1, "interval": 10},
    "points": {"start": 3, "end": 6, "increment": 1, "interval": 10},
}
BASE = dict(
    task="linear_regression",
    task_overrides={"d": 4, "n_points": 6},
    model=ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8),
    batch_size=4,
    eval_batch_size=8,
    device="cpu",
    curriculum=CURRICULUM,
)


@pytest.mark.parametrize(
    ("step", "d_active", "n_points"),
    [(0, 2, 3), (9, 2, 3), (10, 3, 4), (19, 3, 4), (20, 4, 5), (29, 4, 5), (30, 4, 6), (999, 4, 6)],
)
def test_training_batches_follow_the_curriculum(step: int, d_active: int, n_points: int) -> None:
    """Values change at the steps interval, 2 interval, ... (Garg's ``Curriculum.update``)."""
    config = TrainConfig(**BASE)
    data = TrainingData(config.resolved_task(), config, torch.device("cpu"))
    batch = data.batch(step, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 2 * n_points, 5)
    x = batch.inputs[:, 0::2, :4]
    assert x[..., :d_active].abs().min() > 0 and not x[..., d_active:].any()
    assert data.curriculum_record(step) == {"d_active": d_active, "n_points": n_points}


def test_garg_curriculum_reads_from_its_dict() -> None:
    garg = {
        "dims": {"start": 5, "end": 20, "increment": 1, "interval": 2000},
        "points": {"start": 11, "end": 41, "increment": 2, "interval": 2000},
    }
    assert Curriculum.from_dict(garg) == Curriculum.garg()
    assert Curriculum.garg().to_dict() == garg
    config = TrainConfig(task="linear_regression", task_overrides={"n_points": 41}, curriculum=garg)
    assert config.curriculum == Curriculum.garg()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert "curriculum" not in TrainConfig().to_dict()  # older configs keep their form


def test_training_logs_the_curriculum_and_evaluates_the_full_task(tmp_path) -> None:
    config = TrainConfig(**BASE, steps=20, eval_every=10, metrics_every=5)
    train(config, tmp_path, progress=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    logged = {r["step"]: (r["d_active"], r["n_points"]) for r in records if "d_active" in r}
    # the record of step s describes the batch of update s - 1
    assert logged == {5: (2, 3), 10: (2, 3), 15: (3, 4), 20: (3, 4)}
    assert all(r["eval_mse"] > 0 for r in records if "eval_mse" in r)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"task": "single_location", "task_overrides": {}}, "curriculum"),
        ({"train_samples": 8}, "curriculum"),
        ({"task_overrides": {"d": 3, "n_points": 6}}, "curriculum"),
        ({"curriculum": {"dims": CURRICULUM["dims"]}}, "curriculum"),
        ({"curriculum": {**CURRICULUM, "dims": {**CURRICULUM["dims"], "end": 1}}}, "end"),
    ],
)
def test_bad_curricula_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{**BASE, **changes})


def test_evaluation_task_overrides() -> None:
    config = TrainConfig(
        task="single_location",
        task_overrides={"seq_len": 8, "d": 4, "cross_sample_p": 0.5},
        eval_task_overrides={"cross_sample_p": 0.0},
    )
    assert config.resolved_task().cross_sample_p == 0.5
    assert config.eval_task() == toy_tasks.get("single_location", seq_len=8, d=4)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert "eval_task_overrides" not in TrainConfig().to_dict()
    with pytest.raises(ValueError, match="eval_task_overrides"):
        config.replace(eval_task_overrides={"seq_len": 16})
    with pytest.raises(ValueError, match="nope"):
        config.replace(eval_task_overrides={"nope": 1})
    assert Schedule(1, 1, 0, 1).value_at(5) == 1

"""`workbench.train`: learning, determinism, resume after a kill, sparse training (CPU)."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
import yaml

import toy_tasks
import workbench.sparse
from toy_tasks.baselines import averaging_curve, error_curve
from workbench import checkpoint
from workbench.models import ModelConfig
from workbench.runs import read_metrics
from workbench.train import (
    TrainConfig,
    TrainingData,
    TrainingInterrupted,
    evaluate,
    learning_rate,
    load_model,
    train,
)
from workbench.train import evaluation as evaluation_module
from workbench.train.data import evaluation_generator, stream_seed
from workbench.train.evaluation import FINAL_TRACE_EXAMPLES

RECALL = {"vocab_size": 32, "n_pairs": 4, "seq_len": 16}
ATTN_ONLY = ModelConfig(n_layers=2, d_model=64, n_heads=2, d_head=32, attn_only=True)
TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8)


def recall_config(**changes) -> TrainConfig:
    base = TrainConfig(
        task="assoc_recall",
        task_overrides=RECALL,
        model=ATTN_ONLY,
        steps=300,
        batch_size=64,
        lr=3e-3,
        eval_every=100,
        eval_batch_size=256,
        metrics_every=50,
        checkpoint_every=100,
    )
    return base.replace(**changes)


class Interrupt(Exception):
    """Stands for a kill in the middle of a run."""


@pytest.fixture(scope="module")
def recall_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("recall")
    return train(recall_config(eval_metrics=("attention",)), out, progress=False)


def test_assoc_recall_is_learned(recall_run) -> None:
    assert recall_run.metrics["step"] == 300
    assert recall_run.metrics["eval_accuracy"] >= 0.95
    records = read_metrics(recall_run.metrics_path)
    first, last = records[0], records[-1]
    assert last["eval_loss"] < 0.1 * first["eval_loss"]
    # Recall reads the queried key's value: layer-1 attention focuses on it (semantic focus).
    focus_before = max(first["attention"]["relevant_mass"][1])
    focus_after = max(last["attention"]["relevant_mass"][1])
    assert focus_after > max(0.25, 3 * focus_before)


def test_metrics_schema(recall_run) -> None:
    records = read_metrics(recall_run.metrics_path)
    assert [record["step"] for record in records] == [0, 50, 100, 150, 200, 250, 300]
    assert set(records[0]) == {"step", "eval_loss", "eval_accuracy", "attention"}
    assert set(records[1]) == {"step", "loss", "lr", "grad_norm"}
    assert set(records[2]) == {"step", "loss", "lr", "grad_norm", "eval_loss", "eval_accuracy"} | {
        "attention"
    }
    attention = records[-1]["attention"]
    assert set(attention) == {"relevant_mass", "entropy", "k_0.9"}
    for values in attention.values():
        assert len(values) == 2 and all(len(row) == 2 for row in values)  # [layer][head]
    assert all(0.0 <= mass <= 1.0 for row in attention["relevant_mass"] for mass in row)
    assert records[1]["lr"] == pytest.approx(3e-3)
    assert recall_run.checkpoint_path.exists() and recall_run.checkpoint_json_path.exists()
    checkpoint = json.loads(recall_run.checkpoint_json_path.read_text())
    assert checkpoint["step"] == 300
    assert TrainConfig.from_dict(checkpoint["config"]) == recall_config(eval_metrics=("attention",))


def test_evaluation_does_not_depend_on_the_chunk_size(recall_run, monkeypatch) -> None:
    config = recall_config(eval_metrics=("attention",))
    batch = recall_run.task.sample(40, torch.Generator().manual_seed(5))
    whole = evaluate(recall_run.model, recall_run.task, batch, config, torch.device("cpu"))
    monkeypatch.setattr(evaluation_module, "EVAL_CHUNK_TOKENS", 7 * RECALL["seq_len"])
    assert len(evaluation_module.eval_chunks(batch)) == 6
    chunked = evaluate(recall_run.model, recall_run.task, batch, config, torch.device("cpu"))
    assert chunked["eval_accuracy"] == whole["eval_accuracy"]
    assert chunked["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-5)
    for name, rows in whole["attention"].items():
        torch.testing.assert_close(
            torch.tensor(chunked["attention"][name]), torch.tensor(rows), msg=name
        )


def test_load_model_restores_the_trained_weights(recall_run) -> None:
    model, config, step = load_model(recall_run.out_dir)
    assert step == 300 and config == recall_config(eval_metrics=("attention",))
    for name, value in recall_run.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_a_finished_run_is_not_trained_again(recall_run) -> None:
    before = recall_run.metrics_path.read_bytes()
    again = train(recall_config(eval_metrics=("attention",)), recall_run.out_dir, progress=False)
    assert again.resumed_from == 300
    assert again.metrics == recall_run.metrics
    assert recall_run.metrics_path.read_bytes() == before


def test_linear_regression_beats_the_averaging_baseline(tmp_path: Path) -> None:
    config = TrainConfig(
        task="linear_regression",
        task_overrides={"d": 4, "n_points": 12},
        model=ModelConfig(n_layers=2, d_model=64, n_heads=4, d_head=16),
        steps=500,
        batch_size=64,
        lr=2e-3,
        eval_every=250,
        metrics_every=50,
        checkpoint_every=500,
    )
    result = train(config, tmp_path, progress=False)
    assert "eval_mse" in result.metrics
    held_out = result.task.sample(512, torch.Generator().manual_seed(123))
    with torch.no_grad():
        predictions = result.model(held_out.inputs)[:, 0::2, 0]  # at the x-tokens
    model_curve, averaging = error_curve(held_out, predictions), averaging_curve(held_out)
    assert model_curve.mean() < averaging.mean()
    # From d examples on, the model must use the context (predicting 0 scores 1 here).
    assert model_curve[4:].mean() < 0.6
    assert model_curve[4:].mean() < averaging[4:].mean()


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "adamw", "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": 5},
        {"optimizer": "sgd", "momentum": 0.9, "schedule": "step", "step_every": 10, "gamma": 0.5},
        {"train_samples": 44},  # a fixed set: 5 batches of 8 per epoch, 4 examples left out
        {  # forwards that draw: dropout and keys drawn anew at every call
            "model": TINY.replace(dropout=0.2),
            "sparse": {"method": "random_per_call", "hparams": {"k": 3}},
        },
        {  # a learned state with an auxiliary loss, LSH projections and keys drawn per call
            "sparse": {"method": "hax_ranking", "hparams": {"keys": 4}, "block_size": 16},
        },
    ],
    ids=["adamw-cosine", "sgd-step", "fixed-set", "random-forward", "learned-state"],
)
def test_resume_after_a_kill_is_identical(tmp_path: Path, changes: dict) -> None:
    config = recall_config(
        **{"model": TINY, **changes},
        steps=30,
        batch_size=8,
        eval_every=10,
        eval_batch_size=16,
        metrics_every=3,
        checkpoint_every=10,
        grad_clip=0.5,
        eval_metrics=("attention",),
    )
    uninterrupted = train(config, tmp_path / "a", progress=False)

    def kill_at_step_15(step: int, record: dict | None) -> None:
        if step == 15:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "b", progress=False, callback=kill_at_step_15)
    assert read_metrics(tmp_path / "b" / "metrics.jsonl")[-1]["step"] == 15
    resumed = train(config, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 10
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    metrics = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == metrics


def test_sigterm_checkpoints_the_current_step_and_resume_is_identical(tmp_path: Path) -> None:
    config = recall_config(
        model=TINY, steps=24, batch_size=8, eval_every=8, eval_batch_size=16, metrics_every=4
    )  # checkpoint_every (100) is beyond the run: the only mid-run checkpoint is the SIGTERM one
    uninterrupted = train(config, tmp_path / "a", progress=False)

    def terminate_at_step_13(step: int, record: dict | None) -> None:
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="step 14") as raised:
        train(config, tmp_path / "b", progress=False, callback=terminate_at_step_13)
    assert raised.value.step == 14  # the step after the signal finished, then stopped
    assert pickle.loads(pickle.dumps(raised.value)).step == 14  # crosses process boundaries
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is scoped to train()
    assert checkpoint.load(tmp_path / "b").step == 14
    resumed = train(config, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 14
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    metrics = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == metrics


def test_fixed_training_set_epochs_and_generalisation_metrics(tmp_path: Path) -> None:
    config = recall_config(
        model=TINY, steps=12, batch_size=8, train_samples=20, eval_every=6, eval_batch_size=16
    )
    task = config.resolved_task()
    data = TrainingData(task, config, torch.device("cpu"))
    fixed = data.fixed.inputs  # [20, seq]
    rows = {tuple(row.tolist()): i for i, row in enumerate(fixed)}
    assert len(rows) == 20  # distinct examples

    def indices(step: int, source: TrainingData = data) -> list[int]:
        return [rows[tuple(row.tolist())] for row in source.batch(step, None).inputs]

    first, second = indices(0) + indices(1), indices(2) + indices(3)  # 2 batches per epoch
    assert len(set(first)) == 16 and len(set(second)) == 16  # no repeats within an epoch
    assert first != second  # reshuffled
    again = TrainingData(task, config, torch.device("cpu"))
    # A function of the step alone (a fresh object, steps out of order): resuming needs no state.
    assert [indices(step) for step in (5, 0)] == [indices(step, again) for step in (5, 0)]
    records = read_metrics(train(config, tmp_path, progress=False).metrics_path)
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 6, 12]
    assert all({"eval_loss_train", "eval_accuracy_train"} <= set(r) for r in evaluations)
    with pytest.raises(ValueError, match="train_samples"):
        config.replace(train_samples=4)


def test_evaluation_set_training_set_and_batches_are_different_draws() -> None:
    """CPU generators use the low 32 bits of a seed: streams told apart by offsets of 2**32 drew
    the same numbers, and the held-out batch was the head of the fixed training set."""
    config = TrainConfig(
        task="parity", task_overrides={"length": 30}, steps=1, batch_size=8, train_samples=64,
        eval_batch_size=32,
    )  # fmt: skip
    task = config.resolved_task()
    held_out = task.sample(32, evaluation_generator(config)).inputs
    data = TrainingData(task, config, torch.device("cpu"))
    fresh = TrainingData(task, config.replace(train_samples=None), torch.device("cpu"))
    first_fresh = fresh.batch(0, torch.Generator().manual_seed(config.seed)).inputs
    training = {tuple(row) for row in data.fixed.inputs.tolist() + first_fresh.tolist()}
    assert not training & {tuple(row) for row in held_out.tolist()}
    assert len({stream_seed(0, name) for name in ("evaluation", "training set", "epoch")}) == 3
    assert stream_seed(0, "forward", 3) != stream_seed(0, "evaluation forward", 3)
    assert stream_seed(0, "evaluation") != stream_seed(2**32, "evaluation")


def test_resume_refuses_another_config_and_torn_checkpoints(tmp_path: Path) -> None:
    config = recall_config(model=TINY, steps=4, batch_size=4, eval_batch_size=8, checkpoint_every=2)
    train(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(config.replace(lr=1e-2), tmp_path, progress=False)
    fresh = train(config.replace(lr=1e-2), tmp_path, resume=False, progress=False)
    assert fresh.resumed_from is None
    meta = json.loads(fresh.checkpoint_json_path.read_text())
    fresh.checkpoint_json_path.write_text(json.dumps({**meta, "step": 2}))
    with pytest.raises(ValueError, match=r"state\.json has \d+ bytes, its manifest records"):
        train(config.replace(lr=1e-2), tmp_path, progress=False)


def test_early_stop_ends_the_run_and_a_stopped_run_stays_stopped(tmp_path: Path) -> None:
    rule = {"metric": "eval_accuracy", "above": 0.5, "patience": 2}
    config = recall_config(steps=1000, eval_every=20, checkpoint_every=500, early_stop=rule)
    result = train(config, tmp_path, progress=False)
    records = read_metrics(result.metrics_path)
    evaluations = [r for r in records if "eval_accuracy" in r]
    step = result.metrics["step"]
    assert result.metrics["stopped_early"] is True and step < 1000
    # Stopped at the first evaluation that makes two in a row above the bound, not later.
    above = [r["eval_accuracy"] > 0.5 for r in evaluations]
    first = next(i for i in range(1, len(above)) if above[i] and above[i - 1])
    assert evaluations[first]["step"] == step == evaluations[-1]["step"]
    assert json.loads(result.checkpoint_json_path.read_text())["step"] == step
    log = result.metrics_path.read_bytes()
    again = train(config, tmp_path, progress=False)  # resuming a stopped run trains no further
    assert again.resumed_from == step and result.metrics_path.read_bytes() == log


def test_early_stop_resume_after_a_kill_is_identical(tmp_path: Path) -> None:
    rule = {"metric": "eval_loss", "below": 2.5, "patience": 2}
    config = recall_config(
        model=TINY, steps=400, batch_size=16, eval_every=10, eval_batch_size=32,
        metrics_every=5, checkpoint_every=10, lr=1e-2, early_stop=rule,
    )  # fmt: skip
    uninterrupted = train(config, tmp_path / "a", progress=False)
    stop = uninterrupted.metrics["step"]
    assert uninterrupted.metrics.get("stopped_early") and stop > 20

    def kill_one_step_before_the_stop(step: int, record: dict | None) -> None:
        if step == stop - 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "b", progress=False, callback=kill_one_step_before_the_stop)
    resumed = train(config, tmp_path / "b", progress=False)
    assert resumed.metrics == uninterrupted.metrics
    metrics = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == metrics


def test_sparse_training_runs_through_sparsify_and_learns(tmp_path: Path) -> None:
    sparse = recall_config(
        steps=100,
        eval_every=50,
        checkpoint_every=100,
        sparse={
            "method": "sink_window",
            "hparams": {"sink": 1, "window": 8},
            "layers": [1],
            "block_size": 16,
        },
    )
    result = train(sparse, tmp_path / "sparse", progress=False)
    records = read_metrics(result.metrics_path)
    assert result.metrics["eval_loss"] < 0.5 * records[0]["eval_loss"]
    assert records[-1]["loss"] < records[1]["loss"]
    dense = sparse.replace(steps=1, sparse=None)
    dense_records = read_metrics(train(dense, tmp_path / "dense", progress=False).metrics_path)
    assert dense_records[0]["eval_loss"] != records[0]["eval_loss"]  # the sparse forward differs


def test_sparse_training_logs_the_attention_it_trains(tmp_path: Path) -> None:
    """With a sparse method the attention metrics describe the softmax over its selection (top-1:
    entropy 0 and one key for 90% of the mass on the sparse layer), with the dense softmax of the
    same q and k beside them as ``attention_dense``."""
    config = recall_config(
        steps=2,
        eval_every=2,
        eval_batch_size=32,
        eval_metrics=("attention",),
        sparse={"method": "top_k", "hparams": {"k": 1}, "layers": [1], "block_size": 16},
    )
    record = read_metrics(train(config, tmp_path, progress=False).metrics_path)[-1]
    used, dense = record["attention"], record["attention_dense"]
    assert used["entropy"][1] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert used["k_0.9"][1] == pytest.approx([1.0, 1.0])
    assert min(dense["entropy"][1]) > 0.1
    assert used["entropy"][0] == pytest.approx(dense["entropy"][0])  # layer 0 attends densely


def test_an_evaluation_with_every_metric_runs_one_forward_per_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loss, accuracy, attention and stability metrics of an evaluation all come from one captured
    forward per chunk; training steps run one forward each."""
    from transformer_lens import HookedTransformer

    forwards: list[int] = []
    original = HookedTransformer.forward

    def counting(self, tokens, *args, **kwargs):
        forwards.append(tokens.shape[0])
        return original(self, tokens, *args, **kwargs)

    monkeypatch.setattr(HookedTransformer, "forward", counting)
    monkeypatch.setattr(evaluation_module, "EVAL_CHUNK_TOKENS", 40 * RECALL["seq_len"])
    config = recall_config(
        steps=4,
        eval_every=2,
        eval_batch_size=100,
        eval_metrics=("attention", "stability"),
        sparse={"method": "top_k", "hparams": {"k": 3}, "block_size": 16},
    )
    record = read_metrics(train(config, tmp_path, progress=False).metrics_path)[-1]
    assert {"attention", "attention_dense", "stability"} <= set(record)
    # 4 training steps of 64 examples; evaluations at steps 0, 2 and 4 in chunks of 40, 40, 20;
    # the trace of the trained model on 8 examples.
    assert forwards == [40, 40, 20] + [64, 64, 40, 40, 20] * 2 + [FINAL_TRACE_EXAMPLES]


def test_learning_rate_schedules() -> None:
    config = recall_config(steps=100, warmup_steps=10, schedule="cosine", lr=1.0)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 55) == pytest.approx(0.5)
    step = config.replace(schedule="step", step_every=20, gamma=0.5)
    assert [learning_rate(step, i) for i in (10, 29, 30, 50)] == [1.0, 1.0, 0.5, 0.25]
    assert learning_rate(config.replace(schedule="constant", warmup_steps=0), 99) == 1.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"momentum": 1.0}, "momentum"),
        ({"gamma": 1.5}, "gamma"),
        ({"warmup_steps": 301}, "warmup_steps"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"seed": -1}, "seed"),
        ({"metrics_every": 0}, "metrics_every"),
        ({"task_overrides": {"n_pairs": 0}}, "n_pairs"),
        ({"task": "nope"}, "nope"),
        ({"sparse": {"method": "nope"}}, "nope"),
        ({"sparse": {"method": "top_k", "hparams": {"k": 0}}}, "k"),
        ({"sparse": {"method": "top_k", "layers": [2]}}, "sparse.layers"),
        ({"sparse": {"hparams": {"k": 3}}}, "method"),
        ({"device": "tpu"}, "device"),
        ({"eval_metrics": ("attention", "nope")}, "eval_metrics"),
        ({"eval_metrics": "attention"}, "eval_metrics"),
        ({"early_stop": {"metric": "loss", "below": 1.0}}, "early_stop.metric"),
        ({"early_stop": {"metric": "eval_loss"}}, "early_stop"),
        ({"early_stop": {"metric": "eval_loss", "below": 1, "above": 2}}, "early_stop"),
        ({"early_stop": {"metric": "eval_loss", "below": 1, "patience": 0}}, "patience"),
        ({"early_stop": {"metric": "eval_loss", "under": 1}}, "early_stop"),
    ],
)
def test_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        recall_config(**changes)


@pytest.mark.parametrize(
    "task",
    ["assoc_recall", toy_tasks.get("linear_regression", d=3, n_points=5)],
    ids=["by-name", "task-object"],
)
def test_config_round_trips_through_yaml(task) -> None:
    config = recall_config(
        task=task,
        task_overrides=RECALL if task == "assoc_recall" else {},
        model=TINY.replace(positional="sinusoidal", normalization=None),
        sparse={"method": "top_k", "hparams": {"k": 3}, "layers": [0]},
        grad_clip=0.5,
    )
    text = yaml.safe_dump(config.to_dict())
    assert TrainConfig.from_dict(yaml.safe_load(text)) == config
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**config.to_dict(), "epochs": 3})


@pytest.mark.parametrize(
    ("method", "hparams"),
    [("nsa", {"window": 4, "top_n": 3}), ("seer_gate", {"k": 1, "d_gate": 4})],
)
def test_learned_sparse_state_is_trained_checkpointed_and_loaded(
    tmp_path: Path, method: str, hparams: dict
) -> None:
    """A method's learned state is part of the trained model: in the optimiser (it changes), in
    the checkpoints (and loaded back), and its auxiliary losses are logged."""
    config = recall_config(
        task_overrides={"vocab_size": 64, "n_pairs": 8, "seq_len": 48},  # 3 blocks of 16
        steps=4,
        eval_every=4,
        metrics_every=2,
        checkpoint_every=4,
        eval_batch_size=32,
        sparse={"method": method, "hparams": hparams, "layers": [1], "block_size": 16},
    )
    result = train(config, tmp_path, progress=False)
    state = {
        name: value
        for name, value in result.model.state_dict().items()
        if name.startswith("blocks.1.attn.sparse_state.")
    }
    assert state and not any("blocks.0.attn.sparse_state" in n for n in result.model.state_dict())
    fresh = workbench.sparse.get(method, **hparams).state_module(layer=1, heads=2, d_head=32)
    assert any(
        not torch.equal(state[f"blocks.1.attn.sparse_state.{n}"], v)
        for n, v in fresh.state_dict().items()
    )
    loaded, _, _ = load_model(tmp_path)
    for name, value in state.items():
        assert torch.equal(loaded.state_dict()[name], value.cpu())
    logged = read_metrics(result.metrics_path)[1]
    if method == "seer_gate":
        assert logged["sparse_losses"]["seer_distillation"] > 0
    else:
        assert "sparse_losses" not in logged
    resumed = train(config.replace(steps=6), tmp_path, progress=False)  # resumes with its state
    assert resumed.resumed_from == 4


@pytest.mark.parametrize(
    "sparse",
    [None, {"method": "top_k", "hparams": {"k": 5}}, {"method": "banded", "hparams": {"k": 5}}],
    ids=["dense", "top_k", "banded"],
)
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path: Path, sparse, op_counter):
    """Between its logged steps a training step asks the device for no value (on a GPU: no
    sync, the launches queue ahead), dense or sparse over one key block: the difference of 8 and
    4 steps, evaluations and checkpoints pushed past the end (`bench/train_step_ops.py`). With
    SGD: Adam reads its step counters every step, CPU tensors that are no sync on a GPU but
    count here."""
    counts = []
    for steps in (4, 8):
        config = recall_config(
            steps=steps,
            eval_every=100,
            metrics_every=100,
            checkpoint_every=100,
            sparse=sparse,
            optimizer="sgd",
            lr=0.1,
        )
        with op_counter() as counted:
            train(config, tmp_path / f"{steps}", progress=False)
        counts.append(counted.read_backs)
    assert counts[1] == counts[0] > 0  # the evaluation at the end reads its metrics back

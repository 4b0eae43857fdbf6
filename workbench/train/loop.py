"""The training loop: `train` (see `workbench.train`)."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toy_tasks.base import Batch, ToyTask
from workbench import checkpoint
from workbench.attention import route_attention
from workbench.checkpoint import CheckpointError
from workbench.io import atomic_write_text
from workbench.models import build_model, check_compatible, to_device
from workbench.runs import TRACES, Run, read_metrics
from workbench.sparse.patch import SparseCore
from workbench.sparse.state import sparse_losses
from workbench.termination import Terminated, termination_requests
from workbench.train.checkpoint import TrainState, check_resumable, restore, save_checkpoint
from workbench.train.config import EarlyStop, TrainConfig, attach_sparse_state, sparse_plan
from workbench.train.data import TrainingData, evaluation_batch, forward_random_state
from workbench.train.evaluation import (
    FINAL_TRACE,
    evaluate,
    evaluation_mode,
    final_trace,
    precision_context,
    training_set_metrics,
)
from workbench.train.losses import task_loss
from workbench.train.optim import learning_rate, make_optimizer

METRICS_FILE = "metrics.jsonl"
Callback = Callable[[int, "dict[str, Any] | None"], None]
"""``callback(step, record)`` after every optimisation step (``record``: the line logged at that
step, else None), after that step's log line and checkpoint are written."""


class TrainingInterrupted(Terminated):
    """`train` stopped on SIGTERM after writing a checkpoint at ``step`` (resume to continue)."""

    def __init__(self, out_dir: Path, step: int) -> None:
        super().__init__(f"training in {out_dir} stopped on SIGTERM at step {step} (checkpointed)")
        self.out_dir = out_dir
        self.step = step

    def __reduce__(self) -> tuple[type, tuple[Path, int]]:  # picklable: raised in worker processes
        return type(self), (self.out_dir, self.step)


@contextlib.contextmanager
def training_forward(
    model: nn.Module, sparse: SparseCore | None, config: TrainConfig, device: torch.device
) -> Iterator[None]:
    """A training forward: autocast (`precision_context`) and, with a sparse method, its core (built
    once per run) routed into ``config``'s sparse layers."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(precision_context(config, device))
        if sparse is not None:
            stack.enter_context(route_attention(model, sparse, config.sparse.layers))
        yield


def truncate_metrics(path: Path, last_step: int | None) -> None:
    """Keep the records of steps ``<= last_step`` (None: none)."""
    kept = [r for r in read_metrics(path) if last_step is not None and r["step"] <= last_step]
    atomic_write_text(path, "".join(json_line(record) for record in kept))


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """Outcome of `train`.

    Attributes:
        metrics: the last record of ``metrics.jsonl`` (the final step, with its evaluation).
        model: the trained model (train mode, on the run's device).
        task: the task config.
        out_dir, metrics_path: the run's folder and log.
        checkpoint_dir, checkpoint_path, checkpoint_json_path: the last checkpoint's
            ``checkpoints/step-<n>/`` folder, its ``tensors.safetensors`` and its ``state.json``.
        resumed_from: the checkpoint step the run continued from (None: started afresh).
    """

    metrics: dict[str, Any]
    model: nn.Module
    task: ToyTask
    out_dir: Path
    metrics_path: Path
    checkpoint_dir: Path
    checkpoint_path: Path
    checkpoint_json_path: Path
    resumed_from: int | None


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool | str = True,
    progress: bool = True,
    callback: Callback | None = None,
) -> TrainResult:
    """Train a `workbench.models.build_model` model on ``config``'s task; see the module docstring.

    ``resume``: True continues from ``out_dir``'s newest checkpoint when there is one (its config
    must equal ``config`` up to `RESUMABLE_FIELDS`); a damaged one raises `CheckpointError`,
    naming the file. ``"previous"`` continues from the newest checkpoint that verifies, moving
    the damaged newer ones into ``replaced-<time>/``. False starts afresh, moving an old run's
    checkpoints and log into ``replaced-<time>/``. Nothing is deleted but superseded checkpoints.
    ``progress``: a tqdm bar. ``callback``: see `Callback`; an exception it raises stops training
    (the files on disk stay consistent and resumable). SIGTERM (when called from the main thread)
    finishes the step in progress, writes a checkpoint and raises `TrainingInterrupted`.
    """
    from tqdm.auto import tqdm

    config.validate()
    if not (resume is True or resume is False or resume == "previous"):
        raise ValueError(f"resume must be True, False or 'previous', got {resume!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task, device = config.resolved_task(), config.torch_device()
    model = build_model(task, config.model_config())
    check_compatible(model, task)
    to_device(model, device).train()
    attach_sparse_state(model, config)  # before the optimiser: its parameters are trained
    state = TrainState(
        model, make_optimizer(config, model), torch.Generator().manual_seed(config.seed)
    )
    resumed_from = _start(out, state, config, resume)
    if resumed_from is None:
        save_checkpoint(out, state, config)  # before the first log line: a log has a checkpoint
    metrics_path = out / METRICS_FILE
    records = read_metrics(metrics_path)
    hits = _stop_hits(config.early_stop, records)
    eval_batch = evaluation_batch(config).to(device)
    data = TrainingData(task, config, device)
    plan = sparse_plan(config)
    sparse = None if plan is None else plan.core()
    with (
        open(metrics_path, "a", encoding="utf-8") as log,
        tqdm(
            total=config.steps, initial=state.step, disable=not progress, desc=f"train {task.name}"
        ) as bar,
        termination_requests() as terminated,
    ):
        if state.step == 0 and not records:
            hits = _evaluate_into(record := {"step": 0}, state, data, eval_batch, hits)
            _write(log, record)
        while state.step < config.steps and hits is not None:
            record = _train_step(state, data, sparse)
            if record is not None:
                if _due(state.step, config.eval_every, config.steps):
                    hits = _evaluate_into(record, state, data, eval_batch, hits)
                _write(log, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            stopping = terminated() and hits is not None and state.step < config.steps
            if hits is None or stopping or _due(state.step, config.checkpoint_every, config.steps):
                save_checkpoint(out, state, config)
            if stopping:
                raise TrainingInterrupted(out, state.step)
            bar.update(1)
            if callback is not None:
                callback(state.step, record)
    run = Run(out)
    traced = run.trace_path(FINAL_TRACE).with_suffix(".json").exists()
    if config.has_attention_layers() and (not traced or state.step != resumed_from):
        with (
            evaluation_mode(model),
            forward_random_state(config, state.step, device, evaluation=True),
        ):
            final_trace(model, eval_batch, config).save(run.trace_path(FINAL_TRACE))
    last = checkpoint.step_folders(out)[0]
    return TrainResult(
        metrics=read_metrics(metrics_path)[-1],
        model=model,
        task=task,
        out_dir=out,
        metrics_path=metrics_path,
        checkpoint_dir=last,
        checkpoint_path=last / checkpoint.TENSORS,
        checkpoint_json_path=last / checkpoint.STATE,
        resumed_from=resumed_from,
    )


def _start(out: Path, state: TrainState, config: TrainConfig, resume: bool | str) -> int | None:
    """Restore the checkpoint to continue from, cutting the log after its step, or (``resume``
    False) move the old run's files aside. Returns the step resumed from (None: fresh start)."""
    run_files = [out / checkpoint.CHECKPOINTS, out / METRICS_FILE, out / TRACES]
    run_files += [out / checkpoint.LEGACY_TENSORS, out / checkpoint.LEGACY_STATE]
    if resume is False:
        checkpoint.move_aside(out, run_files)
        return None
    checkpoint.migrate_legacy(out)
    found = checkpoint.load(out, previous=resume == "previous")
    if found is None:
        _check_no_log(out / METRICS_FILE)
        return None
    check_resumable(found.state["config"], config)
    newer = [f for f in checkpoint.step_folders(out) if checkpoint.folder_step(f) > found.step]
    if newer:  # damaged: skipped by the explicit resume="previous"
        replaced = checkpoint.move_aside(out, newer)
        if (out / METRICS_FILE).exists():
            shutil.copy2(out / METRICS_FILE, replaced / METRICS_FILE)  # the log as it was
    restore(state, found.state, found.tensors)
    truncate_metrics(out / METRICS_FILE, state.step)
    return state.step


def _check_no_log(path: Path) -> None:
    """Raise `CheckpointError` when the log of a run without a checkpoint holds records: its
    checkpoints were lost (training writes one before the first record)."""
    records = read_metrics(path)
    if records:
        raise CheckpointError(
            f"{path} holds records up to step {records[-1]['step']} but {path.parent} has no "
            f"checkpoint: it was lost or deleted. To go on, {checkpoint.RESTART}."
        )


def _train_step(
    state: TrainState, data: TrainingData, sparse: SparseCore | None
) -> dict[str, Any] | None:
    """One optimisation step (through ``sparse``, the run's sparse core, if any); returns the
    training record when the step is logged."""
    config = data.config
    lr = learning_rate(config, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    step = state.step
    batch = data.batch(step, state.generator)
    with forward_random_state(config, step, data.device):
        with training_forward(state.model, sparse, config, data.device):
            loss = task_loss(data.task, state.model(batch.inputs), batch)
        extra = sparse_losses(state.model)  # e.g. a learned gate's distillation loss
        state.optimizer.zero_grad(set_to_none=True)
        (loss + sum(extra.values())).backward()
    max_norm = math.inf if config.grad_clip is None else config.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for group in state.optimizer.param_groups for p in group["params"]], max_norm
    )
    state.optimizer.step()
    state.step += 1
    logged = state.step % config.metrics_every == 0 or _due(
        state.step, config.eval_every, config.steps
    )
    if not logged:
        return None
    record = {"step": state.step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
    record |= data.curriculum_record(step)
    if extra:
        record["sparse_losses"] = {name: value.item() for name, value in sorted(extra.items())}
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(f"the training loss is {record['loss']} at step {state.step}")
    return record


def _evaluate_into(
    record: dict[str, Any], state: TrainState, data: TrainingData, batch: Batch, hits: int
) -> int | None:
    """Add the evaluation on ``batch`` (and on the fixed training set) to ``record``, and
    ``stopped_early`` when it stops the run; returns the updated `_stop_hits`."""
    config = data.config
    with forward_random_state(config, state.step, data.device, evaluation=True):
        record |= evaluate(state.model, data.task, batch, config, data.device)
        record |= training_set_metrics(state.model, data)
    hits = _stop_hits(config.early_stop, [record], hits)
    if hits is None:
        record["stopped_early"] = True
    return hits


def _stop_hits(
    rule: EarlyStop | None, records: Sequence[Mapping[str, Any]], hits: int = 0
) -> int | None:
    """Consecutive evaluations meeting the ``early_stop`` rule after ``records`` (counting on
    from ``hits``); None once the run is to stop (``patience`` reached, or a record already marked
    ``stopped_early``: a finished run being resumed)."""
    for record in records:
        if record.get("stopped_early"):
            return None
        met = None if rule is None else rule.met(record)
        if met is None:
            continue
        hits = hits + 1 if met else 0
        if hits >= rule.patience:
            return None
    return hits


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _write(log: Any, record: Mapping[str, Any]) -> None:
    log.write(json_line(record))
    log.flush()

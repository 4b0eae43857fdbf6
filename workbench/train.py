"""Training loop for toy tasks: deterministic, resumable, with attention metrics and optional sparse
attention.

    config = TrainConfig(task="assoc_recall", task_overrides={"vocab_size": 32, "n_pairs": 4,
                         "seq_len": 16}, model=ModelConfig(attn_only=True), steps=500, lr=3e-3)
    result = train(config, "runs/recall")
    result.metrics  # {"step": 500, "loss": ..., "eval_accuracy": ..., ...}

Files in ``out_dir``:

* ``metrics.jsonl``: one JSON object per line. Line ``step 0`` holds the evaluation of the initial
  model; then every ``metrics_every`` steps (and every ``eval_every`` step, and the last step) a
  line with ``step``, ``loss`` (that step's training batch), ``lr`` and ``grad_norm`` (before
  clipping), plus at evaluation steps (every ``eval_every`` and the last) ``eval_loss`` and
  ``eval_accuracy`` (token tasks: argmax accuracy on the scored positions) or ``eval_mse``
  (continuous tasks: squared error / ``d_output`` on the scored positions), and with
  ``trace_metrics`` ``attention = {"relevant_mass" | "entropy" | "k_0.9": [layer][head]}``: means
  over the scored positions of the evaluation batch of the attention the model uses (with
  ``sparse_method``, the softmax over the method's selection on the sparse layers, and beside it
  ``attention_dense``: the same of the dense softmax of the same q and k),
  and with ``stability_metrics`` ``stability = {"jacobian_norm" | "method_jacobian_norm" |
  "top_k_margin": [layer][head]}`` (`workbench.metrics.stability.stability_metrics`, same means);
  with a fixed training set (``train_samples``) also ``eval_loss_train`` and
  ``eval_accuracy_train`` / ``eval_mse_train`` on its first ``eval_batch_size`` examples.
* ``checkpoints/step-<n>/``: a checkpoint (`workbench.checkpoint`): ``tensors.safetensors``
  (model and optimizer tensors), ``state.json`` (step, config, data-generator state, schedule,
  optimizer scalars) and, written last, ``manifest.json`` (size and sha256 of both). One at step 0
  (before the first log line), every ``checkpoint_every`` steps, at the end, and on SIGTERM (a
  scheduler's time limit): the step in progress finishes, a checkpoint is written and
  `TrainingInterrupted` is raised. The two newest are kept; older ones are removed once a new one
  is verified on disk, so a kill at any point leaves a complete checkpoint to resume from.
* ``replaced-<time>/``: files moved aside by an explicit choice (below), under their own paths.

Resuming (``train(..., resume=True)``, the default) continues from the newest checkpoint and cuts
``metrics.jsonl`` after its step. A damaged newest checkpoint (a file missing, truncated, changed
or unparsable) raises `CheckpointError` naming the file and the choices: ``resume="previous"``
continues from the newest checkpoint that verifies (the damaged ones are moved aside), and
``resume=False`` starts afresh (the checkpoints and the log are moved aside). A log with records
but no checkpoint raises too: nothing is deleted implicitly. A run folder of the old format (one
``checkpoint.safetensors`` + ``checkpoint.json`` pair) is read by `load_model` and rewritten as
``checkpoints/step-<n>/`` when training resumes.

Determinism: the weights come from the seed, training batches from a CPU ``torch.Generator`` seeded
with ``seed`` (or, with ``train_samples``, from a fixed set drawn once and reshuffled every epoch
with a seed derived from the epoch), the evaluation batch (fixed for the run) from a second
generator. A run resumed from a checkpoint continues bit for bit as the uninterrupted run, and its
``metrics.jsonl`` is the same.

Losses: token tasks, cross-entropy on the scored positions; continuous tasks,
``1/2 ||y - y*||^2`` summed over ``d_output`` and averaged over the scored positions (the emergence
paper's loss). With ``sparse_method``, every forward (training and evaluation) runs through
`workbench.sparse.patch.sparsify`, so the sparse model is what is trained.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import toy_tasks
from kernels.layout import check_block_size
from toy_tasks.base import Batch, ToyTask, check_float, check_int
from workbench import checkpoint
from workbench.analysis import read_metrics
from workbench.checkpoint import CheckpointError
from workbench.io import atomic_write_text
from workbench.models import ModelConfig, build_model, check_compatible, check_known_fields
from workbench.termination import Terminated, termination_requests

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
MAX_SEED = 2**32 - 1
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
"""Largest ``lr`` and ``weight_decay``: far beyond what a run survives (larger values only make it
diverge a few steps in)."""
EVAL_SEED_OFFSET = 2**32
"""The evaluation generator is seeded with ``seed + EVAL_SEED_OFFSET`` (disjoint from training)."""
TRAIN_SET_SEED_OFFSET = 2**33
"""A fixed training set (``train_samples``) is drawn with seed ``seed + TRAIN_SET_SEED_OFFSET``."""
EPOCH_SEED_BASE = 2**60
"""Epoch ``e`` of a fixed training set is shuffled with seed ``EPOCH_SEED_BASE + seed * 2**24 + e``
(a function of the step: resuming needs no shuffling state)."""
RESUMABLE_FIELDS = ("steps", "device")
"""Config fields that may differ between a checkpoint and the run resuming it."""
TRACE_PS = (0.9,)
EVAL_CHUNK_TOKENS = 2**15
"""Evaluation forwards run on chunks of at most this many tokens (at least one example): the
activation memory of an evaluation (a model's ``[batch, heads, seq, seq]`` scores) stays bounded
whatever ``eval_batch_size``."""

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


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Attributes:
        task: a registered task name (with ``task_overrides``) or a task config object (overrides
            are applied to it with ``replace``).
        task_overrides: task parameters replacing the defaults.
        model: the architecture; ``model.seed`` None means "initialise from ``seed``".
        steps: number of optimisation steps.
        batch_size: training examples per step.
        train_samples: train on a fixed set of this many examples (shuffled every epoch, the last
            ``train_samples % batch_size`` of each epoch's order left out), as in the semantic-focus
            paper; evaluations then add ``eval_loss_train`` and ``eval_accuracy_train`` (or
            ``eval_mse_train``) on its first ``eval_batch_size`` examples, so the gap to the
            held-out metrics measures generalisation. None: a fresh batch every step.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr: peak learning rate in ``(0, MAX_LR]``.
        weight_decay: weight decay in ``[0, MAX_WEIGHT_DECAY]`` (decoupled for AdamW, L2 for Adam
            and SGD).
        momentum: SGD momentum in [0, 1).
        schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"step"`` (times ``gamma``
            every ``step_every`` steps after warm-up).
        gamma: step-decay factor in (0, 1].
        step_every: step-decay interval.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        seed: seed of the data (and of the weights unless ``model.seed`` is set).
        eval_every: evaluate every this many steps (and at the last step).
        eval_batch_size: size of the fixed evaluation batch.
        metrics_every: log the training loss every this many steps.
        checkpoint_every: checkpoint every this many steps (and at the last step).
        trace_metrics: add attention metrics (`workbench.trace`) to the evaluations.
        stability_metrics: add softmax-stability metrics (`workbench.metrics.stability`) to the
            evaluations.
        sparse_method: train through this `workbench.sparse` method (None: dense).
        sparse_hparams: its hyper-parameters.
        sparse_layers: the sparse layers (None: all).
        sparse_block_size: block size of the sparse layouts.
        mixed_precision: bf16 autocast on CUDA (no effect on CPU).
        early_stop: stop before ``steps`` once an evaluation metric has met a bound at
            ``patience`` consecutive evaluations, e.g. ``{"metric": "eval_loss", "below": 0.05,
            "patience": 3}`` (``below`` or ``above``; ``patience`` defaults to 1). The last record
            then holds ``"stopped_early": true`` and a checkpoint; None: always train ``steps``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:<n>"``.
    """

    task: str | ToyTask = "assoc_recall"
    task_overrides: Mapping[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 1000
    batch_size: int = 32
    train_samples: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "constant"
    gamma: float = 0.1
    step_every: int = 1000
    warmup_steps: int = 0
    grad_clip: float | None = None
    seed: int = 0
    eval_every: int = 100
    eval_batch_size: int = 256
    metrics_every: int = 10
    checkpoint_every: int = 500
    trace_metrics: bool = False
    stability_metrics: bool = False
    sparse_method: str | None = None
    sparse_hparams: Mapping[str, Any] = field(default_factory=dict)
    sparse_layers: Sequence[int] | None = None
    sparse_block_size: int = 64
    mixed_precision: bool = False
    early_stop: Mapping[str, Any] | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("task_overrides", "sparse_hparams"):
            object.__setattr__(self, name, _keyword_dict(name, getattr(self, name)))
        if isinstance(self.early_stop, Mapping):  # anything else: `validate` names it
            object.__setattr__(self, "early_stop", dict(self.early_stop))
        if self.sparse_layers is not None:
            layers = self.sparse_layers
            if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
                raise ValueError(f"sparse_layers must be None or layer indices, got {layers!r}")
            object.__setattr__(self, "sparse_layers", tuple(layers))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and its allowed range."""
        task = self.resolved_task()
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        for name in ("steps", "batch_size", "step_every", "eval_every", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("metrics_every", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
        check_block_size("sparse_block_size", self.sparse_block_size)
        check_int("warmup_steps", self.warmup_steps, 0, self.steps)
        if self.train_samples is not None:
            check_int("train_samples", self.train_samples, self.batch_size)
        check_int("seed", self.seed, 0, MAX_SEED)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_positive("lr", self.lr, MAX_LR)
        check_float("weight_decay", self.weight_decay, 0.0, MAX_WEIGHT_DECAY)
        check_float("momentum", self.momentum, 0.0, 1.0)
        if self.momentum == 1.0:
            raise ValueError("momentum must be in [0, 1), got 1.0")
        _check_positive("gamma", self.gamma)
        check_float("gamma", self.gamma, 0.0, 1.0)
        if self.grad_clip is not None:
            _check_positive("grad_clip", self.grad_clip)
        for name in ("trace_metrics", "stability_metrics", "mixed_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._validate_sparse()
        self._validate_early_stop()
        self._validate_device()
        if task.kind not in ("tokens", "continuous"):
            raise ValueError(f"task must be a token or continuous task, got kind {task.kind!r}")

    def _validate_sparse(self) -> None:
        if self.sparse_method is None:
            if self.sparse_hparams or self.sparse_layers is not None:
                raise ValueError("sparse_hparams and sparse_layers need a sparse_method")
            return
        import workbench.sparse

        known = workbench.sparse.names()
        if not isinstance(self.sparse_method, str) or self.sparse_method not in known:
            raise ValueError(
                f"sparse_method must be None or one of {', '.join(known)}, "
                f"got {self.sparse_method!r}"
            )
        try:
            self.method()
        except ValueError as error:  # an unknown or out-of-range hyper-parameter
            raise ValueError(f"sparse_hparams of {self.sparse_method}: {error}") from None
        if self.sparse_layers is not None:
            layers = self.sparse_layers
            n_layers = self.model.n_layers
            if not layers or len(set(layers)) < len(layers):
                raise ValueError(f"sparse_layers must be distinct layer indices, got {layers}")
            for layer in layers:
                check_int("sparse_layers", layer, 0, n_layers - 1)

    def _validate_early_stop(self) -> None:
        rule = self.early_stop
        if rule is None:
            return
        allowed = {"metric", "below", "above", "patience"}
        if not isinstance(rule, Mapping) or not set(rule) <= allowed or "metric" not in rule:
            raise ValueError(
                f"early_stop must be a dict with 'metric', one of 'below' / 'above' and an "
                f"optional 'patience', got {rule!r}"
            )
        if not isinstance(rule["metric"], str) or not rule["metric"].startswith("eval_"):
            raise ValueError(
                f"early_stop.metric must name an evaluation metric ('eval_loss', "
                f"'eval_accuracy', 'eval_mse'), got {rule['metric']!r}"
            )
        bounds = [key for key in ("below", "above") if key in rule]
        if len(bounds) != 1:
            raise ValueError(f"early_stop needs exactly one of 'below' and 'above', got {rule!r}")
        check_float(f"early_stop.{bounds[0]}", rule[bounds[0]], -math.inf)
        check_int("early_stop.patience", rule.get("patience", 1), 1)

    def _validate_device(self) -> None:
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device) if isinstance(self.device, str) else None
        except (RuntimeError, TypeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {self.device!r}"
            )

    # -- derived objects
    def resolved_task(self) -> ToyTask:
        """The task config (validated; a bad override raises ``ValueError`` naming it)."""
        if isinstance(self.task, ToyTask):
            return self.task.replace(**self.task_overrides) if self.task_overrides else self.task
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a task name or a ToyTask, got {self.task!r}")
        return toy_tasks.get(self.task, **self.task_overrides)

    def model_config(self) -> ModelConfig:
        """``model`` with its seed set (``seed`` when ``model.seed`` is None)."""
        return self.model if self.model.seed is not None else self.model.replace(seed=self.seed)

    def method(self) -> Any:
        """The `workbench.sparse` method (None when training densely)."""
        if self.sparse_method is None:
            return None
        import workbench.sparse

        return workbench.sparse.get(self.sparse_method, **self.sparse_hparams)

    def torch_device(self) -> torch.device:
        """The device to train on; ``ValueError`` when ``device`` asks for CUDA and there is none."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {self.device!r} but CUDA is not available here")
        return device

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML / JSON friendly) dict; `from_dict` inverts it."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["task"] = self.task if isinstance(self.task, str) else self.task.to_dict()
        data["task_overrides"] = dict(self.task_overrides)
        data["model"] = self.model.to_dict()
        data["sparse_hparams"] = dict(self.sparse_hparams)
        data["sparse_layers"] = None if self.sparse_layers is None else list(self.sparse_layers)
        data["early_stop"] = None if self.early_stop is None else dict(self.early_stop)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        check_known_fields(cls, data)
        values = dict(data)
        if isinstance(values.get("task"), Mapping):
            task = dict(values["task"])
            values["task"] = toy_tasks.get(task.pop("name"), **task)
        if isinstance(values.get("model"), Mapping):
            values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


def _keyword_dict(name: str, value: Any) -> dict[str, Any]:
    """``value`` (a mapping with string keys: keyword arguments) as a dict; ``ValueError`` naming
    ``name`` for anything else."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"{name} must be a mapping of parameter names to values, got {value!r}")
    return dict(value)


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_positive(name: str, value: float, high: float | None = None) -> None:
    check_float(name, value, 0.0, high)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# ---------------------------------------------------------------------------- losses and metrics
def task_loss(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Scalar loss of ``outputs`` (logits ``[batch, seq, vocab]`` or vectors ``[batch, seq,
    d_output]``) on the scored positions of ``batch``, computed in float32."""
    outputs = outputs.float()
    if task.kind == "tokens":
        return nn.functional.cross_entropy(
            outputs.flatten(0, 1), batch.targets.flatten(), ignore_index=toy_tasks.IGNORE_INDEX
        )
    squared = (outputs - batch.targets).square().sum(dim=-1)  # [batch, seq]
    # A masked sum, not squared[mask]: boolean indexing waits for the GPU (its size is data).
    return 0.5 * torch.where(batch.loss_mask, squared, 0.0).sum() / batch.loss_mask.sum()


def task_metrics(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
    """``eval_accuracy`` (token tasks) or ``eval_mse`` (continuous tasks, per output dimension)."""
    mask = batch.loss_mask
    if task.kind == "tokens":
        correct = outputs.argmax(dim=-1) == batch.targets  # [batch, seq]
        return {"eval_accuracy": correct[mask].float().mean().item()}
    squared = (outputs.float() - batch.targets).square().sum(dim=-1)  # [batch, seq]
    return {"eval_mse": (squared[mask].mean() / task.d_output).item()}


def attention_metrics(
    model: nn.Module, batch: Batch, config: TrainConfig
) -> dict[str, dict[str, list[list[float]]]]:
    """Per layer and head, means over the scored positions of ``batch`` of the mass on the relevant
    positions, the entropy and the top-0.9 budget ``k_0.9``, of the attention the model uses
    (``config``'s sparse method where there is one) -> ``{"attention": {name: [layer][head]}}``;
    with a sparse method also ``"attention_dense"``: the same of the dense softmax of the same
    q and k (equal to ``"attention"`` on the layers that attend densely)."""
    from workbench.trace import TraceConfig, trace

    method = config.method()
    traces = [
        trace(
            model,
            chunk.inputs,
            TraceConfig(ps=TRACE_PS),
            relevant_positions=chunk.relevant_positions,
            sparse=method,
            sparse_layers=config.sparse_layers,
            sparse_block_size=config.sparse_block_size,
        )
        for chunk in eval_chunks(batch)
    ]
    weights = batch.loss_mask[:, None, :].float()  # [batch, 1, seq]

    def means(dense: bool) -> dict[str, list[list[float]]]:
        result: dict[str, list[list[float]]] = {}
        for name in ("relevant_mass", "entropy", "k_0.9"):
            rows = []
            for layer in traces[0].layers:
                parts = [part.statistic(layer, name, dense=dense) for part in traces]
                values = torch.cat(parts).float().nan_to_num()  # [batch, heads, seq]
                rows.append(((values * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))).tolist())
            result[name] = rows
        return result

    metrics = {"attention": means(dense=False)}
    if method is not None:
        metrics["attention_dense"] = means(dense=True)
    return metrics


# ---------------------------------------------------------------------------- optimisation
def learning_rate(config: TrainConfig, index: int) -> float:
    """Learning rate of update ``index`` (0-based): warm-up, then the schedule."""
    if index < config.warmup_steps:
        return config.lr * (index + 1) / config.warmup_steps
    after = index - config.warmup_steps
    if config.schedule == "cosine":
        total = max(config.steps - config.warmup_steps, 1)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(after / total, 1.0)))
    if config.schedule == "step":
        return config.lr * config.gamma ** (after // config.step_every)
    return config.lr


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters (fixed sinusoidal positions are buffers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


@contextlib.contextmanager
def forward_context(model: nn.Module, config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Autocast (bf16 on CUDA with ``mixed_precision``) and the sparse method, if any."""
    from workbench.sparse.patch import sparsify

    with contextlib.ExitStack() as stack:
        if config.mixed_precision and device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        method = config.method()
        if method is not None:
            stack.enter_context(
                sparsify(
                    model,
                    method,
                    layers=config.sparse_layers,
                    block_size=config.sparse_block_size,
                    record=False,
                )
            )
        yield


def eval_chunks(batch: Batch) -> list[Batch]:
    """``batch`` in consecutive chunks of at most `EVAL_CHUNK_TOKENS` tokens."""
    return batch.split(max(1, EVAL_CHUNK_TOKENS // batch.inputs.shape[1]))


def evaluate(
    model: nn.Module, task: ToyTask, batch: Batch, config: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """``eval_loss``, the task metric, (``trace_metrics``) ``attention`` and
    (``stability_metrics``) ``stability`` on ``batch``."""
    with evaluation_mode(model):
        metrics = loss_and_task_metric(model, task, batch, config, device)
        if config.trace_metrics:
            metrics |= attention_metrics(model, batch, config)
        if config.stability_metrics:
            from workbench.metrics.stability import stability_metrics

            metrics["stability"] = stability_metrics(
                model, batch.inputs, batch.loss_mask, config.method()
            )
    return metrics


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside, ``model.train()`` on leaving (also on errors)."""
    model.eval()
    try:
        yield
    finally:
        model.train()


def loss_and_task_metric(
    model: nn.Module, task: ToyTask, batch: Batch, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """``eval_loss`` and ``eval_accuracy`` / ``eval_mse`` of ``model`` on ``batch`` (no grad)."""
    with torch.no_grad(), forward_context(model, config, device):
        outputs = torch.cat([model(chunk.inputs).float() for chunk in eval_chunks(batch)])
    return {"eval_loss": task_loss(task, outputs, batch).item()} | task_metrics(
        task, outputs, batch
    )


class TrainingData:
    """Where training batches come from: a fresh sample from the training generator every step,
    or (``train_samples``) shuffled epochs over a fixed set kept on the device."""

    def __init__(self, task: ToyTask, config: TrainConfig, device: torch.device) -> None:
        self.task, self.config, self.device = task, config, device
        self.fixed: Batch | None = None
        if config.train_samples is not None:
            generator = torch.Generator().manual_seed(config.seed + TRAIN_SET_SEED_OFFSET)
            self.fixed = task.sample(config.train_samples, generator).to(device)
            count = min(config.eval_batch_size, config.train_samples)
            self.fixed_head = self.fixed.take(torch.arange(count, device=device))
            self.steps_per_epoch = config.train_samples // config.batch_size
            self._epoch, self._order = -1, torch.empty(0)

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        """The batch of optimisation step ``step`` (0-based)."""
        size = self.config.batch_size
        if self.fixed is None:
            return self.task.sample(size, generator).to(self.device, non_blocking=True)
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            seed = EPOCH_SEED_BASE + self.config.seed * 2**24 + epoch
            order = torch.randperm(
                self.fixed.batch_size, generator=torch.Generator().manual_seed(seed)
            )
            self._epoch, self._order = epoch, order.to(self.device)
        return self.fixed.take(self._order[index * size : (index + 1) * size])

    def train_metrics(self, model: nn.Module) -> dict[str, float]:
        """Loss and task metric on the first ``eval_batch_size`` examples of the fixed set, keys
        suffixed ``_train`` (empty without a fixed set)."""
        if self.fixed is None:
            return {}
        with evaluation_mode(model):
            metrics = loss_and_task_metric(
                model, self.task, self.fixed_head, self.config, self.device
            )
        return {f"{name}_train": value for name, value in metrics.items()}


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """What a checkpoint restores besides the config: the model, the optimizer, the step and the
    training-data generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0


def save_checkpoint(out_dir: Path, state: TrainState, config: TrainConfig) -> Path:
    """Write the checkpoint of ``state.step`` with `workbench.checkpoint.write`; returns its
    folder. Tensors: ``model/<name>`` and ``optimizer/<index>/<key>``; JSON state: ``step``,
    ``config``, ``data_generator_state``, ``scheduler`` and ``optimizer_scalars``."""
    tensors = {f"model/{name}": value for name, value in state.model.state_dict().items()}
    scalars: dict[str, Any] = {}
    for index, entry in state.optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    generator_state = base64.b64encode(state.generator.get_state().numpy().tobytes()).decode()
    meta = {
        "step": state.step,
        "config": config.to_dict(),
        "data_generator_state": generator_state,
        "scheduler": {"step": state.step, "lr": learning_rate(config, max(state.step - 1, 0))},
        "optimizer_scalars": scalars,
    }
    return checkpoint.write(out_dir, state.step, meta, tensors)


def restore(
    state: TrainState, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Load a checkpoint's JSON state and tensors (`workbench.checkpoint.Checkpoint`) into
    ``state``."""
    state.model.load_state_dict(_model_tensors(tensors))
    optimizer_state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    for name, value in meta["optimizer_scalars"].items():
        index, key = name.split("/", 1)
        optimizer_state.setdefault(int(index), {})[key] = value
    param_groups = state.optimizer.state_dict()["param_groups"]
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": param_groups})
    raw = base64.b64decode(meta["data_generator_state"])
    state.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    state.step = int(meta["step"])


def _model_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        name.removeprefix("model/"): value
        for name, value in tensors.items()
        if name.startswith("model/")
    }


def check_resumable(saved: Mapping[str, Any], config: TrainConfig) -> None:
    """Raise ``ValueError`` when a checkpoint's config differs from ``config`` outside
    `RESUMABLE_FIELDS`."""
    current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
    changed = sorted(
        name
        for name in set(saved) | set(current)
        if name not in RESUMABLE_FIELDS and saved.get(name) != current.get(name)
    )
    if changed:
        raise ValueError(
            f"the checkpoint was written with a different config (fields {changed}); use another "
            "out_dir or resume=False"
        )


def load_model(
    out_dir: str | Path, device: str | torch.device = "cpu", *, previous: bool = False
) -> tuple[nn.Module, TrainConfig, int]:
    """``(model, config, step)`` of the newest checkpoint in ``out_dir`` (a legacy
    ``checkpoint.json`` pair too), the model in eval mode. A damaged newest checkpoint raises
    `CheckpointError`; ``previous=True`` takes the newest one that verifies instead."""
    found = checkpoint.load(out_dir, previous=previous)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {out_dir}")
    config = TrainConfig.from_dict(found.state["config"])
    model = build_model(config.resolved_task(), config.model_config())
    model.load_state_dict(_model_tensors(found.tensors))
    return model.to(torch.device(device), print_details=False).eval(), config, found.step


# ---------------------------------------------------------------------------- metrics log
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
    model.to(device, print_details=False).train()
    state = TrainState(
        model, make_optimizer(config, model), torch.Generator().manual_seed(config.seed)
    )
    resumed_from = _start(out, state, config, resume)
    if resumed_from is None:
        save_checkpoint(out, state, config)  # before the first log line: a log has a checkpoint
    metrics_path = out / METRICS_FILE
    records = read_metrics(metrics_path)
    hits = _stop_hits(config.early_stop, records)
    eval_generator = torch.Generator().manual_seed(config.seed + EVAL_SEED_OFFSET)
    eval_batch = task.sample(config.eval_batch_size, eval_generator).to(device)
    data = TrainingData(task, config, device)
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
            record = _train_step(state, data)
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
    run_files = [out / checkpoint.CHECKPOINTS, out / METRICS_FILE]
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


def _train_step(state: TrainState, data: TrainingData) -> dict[str, Any] | None:
    """One optimisation step; returns the training record when the step is logged."""
    config = data.config
    lr = learning_rate(config, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    batch = data.batch(state.step, state.generator)
    with forward_context(state.model, config, data.device):
        loss = task_loss(data.task, state.model(batch.inputs), batch)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
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
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(f"the training loss is {record['loss']} at step {state.step}")
    return record


def _evaluate_into(
    record: dict[str, Any], state: TrainState, data: TrainingData, batch: Batch, hits: int
) -> int | None:
    """Add the evaluation on ``batch`` (and on the fixed training set) to ``record``, and
    ``stopped_early`` when it stops the run; returns the updated `_stop_hits`."""
    config = data.config
    record |= evaluate(state.model, data.task, batch, config, data.device)
    record |= data.train_metrics(state.model)
    hits = _stop_hits(config.early_stop, [record], hits)
    if hits is None:
        record["stopped_early"] = True
    return hits


def _stop_hits(
    rule: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]], hits: int = 0
) -> int | None:
    """Consecutive evaluations meeting the ``early_stop`` rule after ``records`` (counting on
    from ``hits``); None once the run is to stop (``patience`` reached, or a record already marked
    ``stopped_early``: a finished run being resumed)."""
    for record in records:
        if record.get("stopped_early"):
            return None
        if rule is None or rule["metric"] not in record:
            continue
        value = record[rule["metric"]]
        met = value < rule["below"] if "below" in rule else value > rule["above"]
        hits = hits + 1 if met else 0
        if hits >= rule.get("patience", 1):
            return None
    return hits


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _write(log: Any, record: Mapping[str, Any]) -> None:
    log.write(json_line(record))
    log.flush()

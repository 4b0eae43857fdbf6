"""The configuration of a training run (`TrainConfig`), validated on construction: a bad field raises
``ValueError`` naming it and its allowed range."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import toy_tasks
from kernels.layout import check_block_size
from toy_tasks.base import ToyTask, check_float, check_int
from workbench.capture import SparsePlan
from workbench.models import ModelConfig, check_known_fields

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
MAX_SEED = 2**32 - 1
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
"""Largest ``lr`` and ``weight_decay``: far beyond what a run survives (larger values only make it
diverge a few steps in)."""
RESUMABLE_FIELDS = ("steps", "device")
"""Config fields that may differ between a checkpoint and the run resuming it."""


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


def sparse_plan(config: TrainConfig) -> SparsePlan | None:
    """Where ``config``'s sparse method runs (None: dense training)."""
    method = config.method()
    if method is None:
        return None
    return SparsePlan(method, layers=config.sparse_layers, block_size=config.sparse_block_size)

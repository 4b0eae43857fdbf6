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
from toy_tasks.linear_regression import Curriculum, LinearRegressionICL
from workbench.capture import SparsePlan
from workbench.devices import check_device, resolve_device
from workbench.emergence_toy.model import EmergenceToyConfig, check_task
from workbench.models import ModelConfig, check_known_fields
from workbench.runs import migrate_config
from workbench.train.registry import names as eval_metric_names

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
        model: the architecture (a `ModelConfig`, or an `EmergenceToyConfig`: the emergence
            paper's toy model, on the single-location task with ``position="last"``, without
            evaluation metrics or sparse attention; a dict with ``architecture: emergence_toy``
            is one); ``model.seed`` None means "initialise from ``seed``".
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
        eval_metrics: registered evaluation metrics (`workbench.train.registry`) each evaluation
            adds, e.g. ``("attention", "stability")``.
        sparse: train through a sparse-attention method (`SparseConfig`; a dict is converted),
            None: dense attention.
        mixed_precision: bf16 autocast on CUDA (no effect on CPU).
        early_stop: stop before ``steps`` once an evaluation metric has met a bound (`EarlyStop`;
            a dict such as ``{"metric": "eval_loss", "below": 0.05, "patience": 3}`` is
            converted). The last record then holds ``"stopped_early": true`` and a checkpoint;
            None: always train ``steps``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:<n>"``.
        curriculum: Garg et al.'s curriculum (`toy_tasks.Curriculum`; a dict ``{dims: {start,
            end, increment, interval}, points: {...}}`` is converted) for the linear-regression
            task: training step ``i`` samples the task with ``d_active`` and ``n_points`` of step
            ``i`` (ending within the task's ``d`` and ``n_points``); evaluations use the full
            task; training records add ``d_active`` and ``n_points``. Not with
            ``train_samples``. None: always the full task.
        eval_task_overrides: task parameters replacing the training task's for the evaluation
            batch (e.g. ``{"cross_sample_p": 0}``: test data without repetition, as the emergence
            paper evaluates); the sizes the model sees must stay those of the training task.

    `to_dict` leaves out ``curriculum`` and ``eval_task_overrides`` at None / empty (configs and
    checkpoints from before them are unchanged).
    """

    task: str | ToyTask = "assoc_recall"
    task_overrides: Mapping[str, Any] = field(default_factory=dict)
    model: ModelConfig | EmergenceToyConfig = field(default_factory=ModelConfig)
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
    eval_metrics: Sequence[str] = ()
    sparse: SparseConfig | None = None
    mixed_precision: bool = False
    early_stop: EarlyStop | None = None
    device: str = "auto"
    curriculum: Curriculum | None = None
    eval_task_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "task_overrides", _keyword_dict("task_overrides", self.task_overrides)
        )
        object.__setattr__(
            self,
            "eval_task_overrides",
            _keyword_dict("eval_task_overrides", self.eval_task_overrides),
        )
        if isinstance(self.curriculum, Mapping):
            object.__setattr__(self, "curriculum", Curriculum.from_dict(self.curriculum))
        object.__setattr__(self, "eval_metrics", _name_tuple("eval_metrics", self.eval_metrics))
        if isinstance(self.sparse, Mapping):
            object.__setattr__(self, "sparse", SparseConfig.from_dict(self.sparse))
        if isinstance(self.early_stop, Mapping):
            object.__setattr__(self, "early_stop", EarlyStop.from_dict(self.early_stop))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and its allowed range."""
        task = self.resolved_task()
        if not isinstance(self.model, (ModelConfig, EmergenceToyConfig)):
            raise ValueError(
                f"model must be a ModelConfig or an EmergenceToyConfig, got "
                f"{type(self.model).__name__}"
            )
        for name in ("steps", "batch_size", "step_every", "eval_every", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("metrics_every", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
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
        if not isinstance(self.mixed_precision, bool):
            raise ValueError(f"mixed_precision must be a bool, got {self.mixed_precision!r}")
        self._validate_eval_metrics()
        self._validate_sparse()
        if self.early_stop is not None and not isinstance(self.early_stop, EarlyStop):
            raise ValueError(
                f"early_stop must be an EarlyStop, a dict or None, got {self.early_stop!r}"
            )
        check_device(self.device)
        if task.kind not in ("tokens", "continuous", "classification"):
            raise ValueError(
                f"task must be a token, continuous or classification task, got kind {task.kind!r}"
            )
        if isinstance(self.model, EmergenceToyConfig):
            self._validate_toy_model(task)
        self._validate_curriculum(task)
        self._validate_eval_task(task)

    def _validate_curriculum(self, task: ToyTask) -> None:
        if self.curriculum is None:
            return
        if not isinstance(self.curriculum, Curriculum):
            raise ValueError(
                f"curriculum must be a Curriculum, a dict or None, got {self.curriculum!r}"
            )
        if not isinstance(task, LinearRegressionICL):
            raise ValueError(f"curriculum applies to linear_regression, not to {task.name}")
        if self.train_samples is not None:
            raise ValueError("curriculum and train_samples exclude each other (a fixed set)")
        self.curriculum.check_base(task)

    def _validate_eval_task(self, task: ToyTask) -> None:
        """The evaluation task must have the training task's sizes (the model's)."""
        evaluated = self.eval_task()
        if _sizes(evaluated) != _sizes(task):
            raise ValueError(
                f"eval_task_overrides must keep the sizes of the training task "
                f"{_sizes(task)}, got {_sizes(evaluated)}"
            )

    def _validate_toy_model(self, task: ToyTask) -> None:
        """The toy model reads the single-location task and has no attention layers to capture
        or sparsify."""
        check_task(task)
        if self.eval_metrics:
            raise ValueError(
                "eval_metrics must be empty with the emergence toy model (it has no attention "
                f"layers to capture), got {list(self.eval_metrics)}"
            )
        if self.sparse is not None:
            raise ValueError("sparse must be None with the emergence toy model")

    def _validate_eval_metrics(self) -> None:
        known = eval_metric_names()
        unknown = [name for name in self.eval_metrics if name not in known]
        if unknown or len(set(self.eval_metrics)) < len(self.eval_metrics):
            raise ValueError(
                f"eval_metrics must be distinct registered evaluation metrics "
                f"({', '.join(known)}), got {list(self.eval_metrics)}"
            )

    def _validate_sparse(self) -> None:
        if self.sparse is None:
            return
        if not isinstance(self.sparse, SparseConfig):
            raise ValueError(f"sparse must be a SparseConfig, a dict or None, got {self.sparse!r}")
        for layer in self.sparse.layers or ():
            check_int("sparse.layers", layer, 0, self.model.n_layers - 1)

    # -- derived objects
    def resolved_task(self) -> ToyTask:
        """The task config (validated; a bad override raises ``ValueError`` naming it)."""
        if isinstance(self.task, ToyTask):
            return self.task.replace(**self.task_overrides) if self.task_overrides else self.task
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a task name or a ToyTask, got {self.task!r}")
        return toy_tasks.get(self.task, **self.task_overrides)

    def eval_task(self) -> ToyTask:
        """The task of the evaluation batch: the training task with ``eval_task_overrides``
        (validated; a bad override raises ``ValueError`` naming it)."""
        task = self.resolved_task()
        if not self.eval_task_overrides:
            return task
        fields = task.to_dict()
        return toy_tasks.get(fields.pop("name"), **{**fields, **self.eval_task_overrides})

    def model_config(self) -> ModelConfig | EmergenceToyConfig:
        """``model`` with its seed set (``seed`` when ``model.seed`` is None)."""
        return self.model if self.model.seed is not None else self.model.replace(seed=self.seed)

    def has_attention_layers(self) -> bool:
        """Whether the model is a transformer (traced, captured), not the emergence toy model."""
        return isinstance(self.model, ModelConfig)

    def method(self) -> Any:
        """The `workbench.sparse` method (None when training densely)."""
        return None if self.sparse is None else self.sparse.build()

    def torch_device(self) -> torch.device:
        """The device to train on; ``ValueError`` when ``device`` asks for CUDA and there is none."""
        return resolve_device(self.device)

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
        data["eval_metrics"] = list(self.eval_metrics)
        data["sparse"] = None if self.sparse is None else self.sparse.to_dict()
        data["early_stop"] = None if self.early_stop is None else self.early_stop.to_dict()
        data["eval_task_overrides"] = dict(self.eval_task_overrides)
        data["curriculum"] = None if self.curriculum is None else self.curriculum.to_dict()
        for name, default in (("curriculum", None), ("eval_task_overrides", {})):
            if data[name] == default:  # left out: configs from before the field are unchanged
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config of a nested dict (`to_dict`'s, or a spec's); a dict of the older schema
        (flat ``sparse_*`` keys, ``trace_metrics`` / ``stability_metrics`` flags) is read through
        `migrate_config`."""
        values = migrate_config(data)
        check_known_fields(cls, values)
        if isinstance(values.get("task"), Mapping):
            task = dict(values["task"])
            values["task"] = toy_tasks.get(task.pop("name"), **task)
        if isinstance(values.get("model"), Mapping):
            values["model"] = model_from_dict(values["model"])
        return cls(**values)


def model_from_dict(data: Mapping[str, Any]) -> ModelConfig | EmergenceToyConfig:
    """A `ModelConfig`, or an `EmergenceToyConfig` when ``data`` names an ``architecture``."""
    if "architecture" in data:
        return EmergenceToyConfig.from_dict(data)
    return ModelConfig.from_dict(data)


@dataclass(frozen=True)
class SparseConfig:
    """Train through a sparse-attention method: every forward of the run (training and
    evaluation) attends through ``method`` on ``layers``.

    Attributes:
        method: a registered method name (`workbench.sparse.names()`).
        hparams: its hyper-parameters (the others keep their defaults).
        layers: the layers that attend sparsely (None: all; `TrainConfig` checks them against the
            model).
        block_size: block size of its layouts (a power of two >= 16).
    """

    method: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    layers: Sequence[int] | None = None
    block_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", _keyword_dict("sparse.hparams", self.hparams))
        if self.layers is not None:
            object.__setattr__(self, "layers", _index_tuple("sparse.layers", self.layers))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field."""
        import workbench.sparse

        known = workbench.sparse.names()
        if not isinstance(self.method, str) or self.method not in known:
            raise ValueError(
                f"sparse.method must be one of {', '.join(known)}, got {self.method!r}"
            )
        try:
            self.build()
        except ValueError as error:  # an unknown or out-of-range hyper-parameter
            raise ValueError(f"sparse.hparams of {self.method}: {error}") from None
        if self.layers is not None and (
            not self.layers or len(set(self.layers)) < len(self.layers)
        ):
            raise ValueError(f"sparse.layers must be distinct layer indices, got {self.layers}")
        check_block_size("sparse.block_size", self.block_size)

    def build(self) -> Any:
        """The `workbench.sparse.SparseMethod`."""
        import workbench.sparse

        return workbench.sparse.get(self.method, **self.hparams)

    def to_dict(self) -> dict[str, Any]:
        """``method`` and ``hparams``, plus ``layers`` and ``block_size`` where not the default."""
        data: dict[str, Any] = {"method": self.method, "hparams": dict(self.hparams)}
        if self.layers is not None:
            data["layers"] = list(self.layers)
        if self.block_size != 64:
            data["block_size"] = self.block_size
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SparseConfig:
        check_known_fields(cls, data, "sparse")
        return cls(**data)


@dataclass(frozen=True)
class EarlyStop:
    """Stop training once evaluation ``metric`` has been ``below`` (or ``above``) its bound at
    ``patience`` consecutive evaluations.

    Attributes:
        metric: an evaluation metric of the log (``eval_loss``, ``eval_accuracy``, ``eval_mse``,
            or their ``_train`` versions).
        below, above: the bound (exactly one, finite).
        patience: consecutive evaluations that must meet it (>= 1).
    """

    metric: str
    below: float | None = None
    above: float | None = None
    patience: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field."""
        if not isinstance(self.metric, str) or not self.metric.startswith("eval_"):
            raise ValueError(
                f"early_stop.metric must name an evaluation metric ('eval_loss', "
                f"'eval_accuracy', 'eval_mse'), got {self.metric!r}"
            )
        bounds = [name for name in ("below", "above") if getattr(self, name) is not None]
        if len(bounds) != 1:
            raise ValueError(
                f"early_stop needs exactly one of 'below' and 'above', got below={self.below!r}, "
                f"above={self.above!r}"
            )
        check_float(f"early_stop.{bounds[0]}", getattr(self, bounds[0]), -math.inf)
        check_int("early_stop.patience", self.patience, 1)

    def met(self, record: Mapping[str, Any]) -> bool | None:
        """Whether ``record`` meets the bound (None when it holds no value of ``metric``)."""
        if self.metric not in record:
            return None
        value = record[self.metric]
        return value < self.below if self.below is not None else value > self.above

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"metric": self.metric}
        data |= {"below": self.below} if self.below is not None else {"above": self.above}
        return data | {"patience": self.patience}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EarlyStop:
        check_known_fields(cls, data, "early_stop")
        return cls(**data)


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
    if config.sparse is None:
        return None
    sparse = config.sparse
    return SparsePlan(sparse.build(), layers=sparse.layers, block_size=sparse.block_size)


def attach_sparse_state(model: Any, config: TrainConfig) -> None:
    """Attach the learned state of ``config``'s sparse method (if it has one) to ``model``'s
    sparse layers for good: trained with the model and saved in its checkpoints."""
    from workbench.sparse.patch import attach_states

    plan = sparse_plan(config)
    if plan is not None:
        attach_states(model, plan.method, plan.layers, plan.heads)


def _sizes(task: ToyTask) -> tuple[Any, ...]:
    """What a model is sized by: the kind, the length and the vocabulary or vector sizes."""
    if task.kind == "tokens":
        return (task.kind, task.seq_len, task.vocab_size)
    if task.kind == "classification":
        return (task.kind, task.seq_len, task.vocab_size, task.n_classes)
    return (task.kind, task.seq_len, task.d_input, task.d_output)


def _name_tuple(name: str, value: Any) -> tuple[str, ...]:
    """``value`` (a sequence of strings) as a tuple; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of names, got {value!r}")
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name} must be a sequence of names, got {value!r}")
    return items


def _index_tuple(name: str, value: Any) -> tuple[int, ...]:
    """``value`` (a sequence of non-negative ints) as a tuple; ``ValueError`` naming ``name``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be None or layer indices, got {value!r}")
    items = tuple(value)
    for item in items:
        check_int(name, item, 0)
    return items

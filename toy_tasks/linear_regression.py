"""In-context linear regression (Garg et al. 2022, "What can transformers learn in-context?").

Per prompt ``w ~ N(0, I_d)``, ``x_i ~ N(0, I_d)`` and ``y_i = w . x_i + noise * N(0, 1)``. The
prompt interleaves the pairs as tokens of size ``d + 1``: the x-token ``[x_i, 0]`` and the y-token
``[y_i, 0, ..., 0, 1]`` (the last coordinate flags y-tokens). The model predicts ``y_i`` at the
x-token of ``x_i`` (position ``2i``), from the ``i`` earlier pairs and ``x_i`` itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from toy_tasks.base import (
    NO_POSITION,
    Batch,
    ToyTask,
    check_batch_size,
    check_float,
    check_int,
    elide,
    format_vector,
)
from toy_tasks.registry import register_task

MAX_NOISE = 1e6
"""Largest ``noise``: far beyond the signal (``y`` has standard deviation ``sqrt(d)``) and small
enough that float32 batches and their squared errors stay finite."""


@register_task
@dataclass(frozen=True)
class LinearRegressionICL(ToyTask):
    """Garg et al.'s linear-regression prompts.

    Attributes:
        d: dimension of ``x`` and ``w``.
        n_points: number of (x, y) pairs per prompt; the sequence has ``2 * n_points`` tokens.
        noise: standard deviation of the Gaussian noise added to ``y``, at most ``MAX_NOISE``.
        d_active: Garg's dimension curriculum: coordinates ``>= d_active`` of every ``x`` are zero
            (``None``: all ``d`` are active).
    """

    name: ClassVar[str] = "linear_regression"
    kind: ClassVar[Literal["tokens", "continuous"]] = "continuous"
    description: ClassVar[str] = (
        "in-context linear regression: y_i at each x_i token (x, y interleaved, a flag dimension "
        "marks y tokens)"
    )
    relevance: ClassVar[str] = "every earlier (x, y) token and the query x"
    paper: ClassVar[str] = (
        "What can transformers learn in-context? A case study of simple function classes "
        "(Garg et al.), arXiv 2208.01066"
    )

    d: int = 20
    n_points: int = 40
    noise: float = 0.0
    d_active: int | None = None

    def validate(self) -> None:
        check_int("d", self.d, 1)
        check_int("n_points", self.n_points, 1)
        check_float("noise", self.noise, 0.0, MAX_NOISE)
        if self.d_active is not None:
            check_int("d_active", self.d_active, 1, self.d)

    @property
    def active_dims(self) -> int:
        """Number of non-zero leading coordinates of ``x``."""
        return self.d if self.d_active is None else self.d_active

    @property
    def d_input(self) -> int:
        return self.d + 1

    @property
    def d_output(self) -> int:
        return 1

    @property
    def seq_len(self) -> int:
        return 2 * self.n_points

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs ``[batch, 2n, d + 1]``, targets ``[batch, 2n, 1]`` (``y_i`` at position ``2i``),
        loss mask ``[batch, 2n]``, relevant positions ``[batch, 2n, 2n - 1]``; ``metadata["w"]``
        is ``[batch, d]``."""
        check_batch_size(batch_size)
        device = generator.device
        w = torch.randn(batch_size, self.d, generator=generator, device=device)
        x = torch.randn(batch_size, self.n_points, self.d, generator=generator, device=device)
        x[:, :, self.active_dims :] = 0.0
        eps = torch.randn(batch_size, self.n_points, generator=generator, device=device)
        y = torch.einsum("bnd,bd->bn", x, w) + self.noise * eps

        inputs = torch.zeros(batch_size, self.seq_len, self.d_input, device=device)
        inputs[:, 0::2, : self.d] = x
        inputs[:, 1::2, 0] = y
        inputs[:, 1::2, self.d] = 1.0
        targets = torch.zeros(batch_size, self.seq_len, 1, device=device)
        targets[:, 0::2, 0] = y
        loss_mask = torch.zeros(batch_size, self.seq_len, dtype=torch.bool, device=device)
        loss_mask[:, 0::2] = True
        relevant = self._relevant_table(device).expand(batch_size, -1, -1).clone()
        return Batch(inputs, targets, loss_mask, relevant, metadata={"w": w})

    def _relevant_table(self, device: torch.device) -> torch.Tensor:
        """``[2n, 2n - 1]`` int64: row ``2i`` lists positions ``0..2i``; odd rows are padding."""
        seq = self.seq_len
        columns = torch.arange(seq - 1, device=device)
        rows = torch.arange(seq, device=device)[:, None]
        keep = (columns[None, :] <= rows) & (rows % 2 == 0)
        return torch.where(keep, columns[None, :], NO_POSITION)

    def render(self, batch: Batch, index: int = 0) -> str:
        inputs = batch.inputs[index].cpu()
        targets = batch.targets[index, :, 0].cpu()
        header = (
            f"linear_regression d={self.d} n_points={self.n_points} noise={self.noise} "
            f"d_active={self.active_dims}  example {index}"
        )
        seq = self.seq_len
        rows = [self._render_row(pos, inputs[pos], float(targets[pos])) for pos in range(seq)]
        keep = [*range(min(8, seq)), *range(max(0, seq - 4), seq)]
        w = format_vector(batch.metadata["w"][index].cpu())
        legend = "scored: every x-token (predicts y_i); relevant: all earlier tokens + the query"
        return "\n".join([header, f"w = {w}", legend, *elide(rows, keep)])

    def _render_row(self, pos: int, token: torch.Tensor, target: float) -> str:
        pair = pos // 2
        if pos % 2 == 1:
            return f"{pos:4d}  y_{pair:<3d} y = {float(token[0]):7.2f}"
        return (
            f"{pos:4d}  x_{pair:<3d} {format_vector(token[: self.d])}  scored: target "
            f"{target:.2f}, relevant 0..{pos}"
        )


@dataclass(frozen=True)
class Schedule:
    """Integer schedule: ``value_at(step) = min(end, start + increment * (step // interval))``."""

    start: int
    end: int
    increment: int
    interval: int

    def __post_init__(self) -> None:
        check_int("start", self.start, 1)
        check_int("end", self.end, self.start)
        check_int("increment", self.increment, 0)
        check_int("interval", self.interval, 1)

    def value_at(self, step: int) -> int:
        check_int("step", step, 0)
        return min(self.end, self.start + self.increment * (step // self.interval))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "schedule") -> Schedule:
        """The schedule of ``{start, end, increment, interval}`` (``ValueError`` naming ``name``
        for another mapping)."""
        return cls(**_fields_of(cls, data, name))


@dataclass(frozen=True)
class Curriculum:
    """Garg's curriculum: the active dimension and the number of points grow with the step.

    Garg et al. (dtsip/in-context-learning, ``src/curriculum.py``, ``conf/base.yaml``): training
    step ``i`` (0-based) samples ``d_active = min(end, start + increment * (i // interval))`` and
    the number of points likewise, so the values change at the steps ``interval``,
    ``2 interval``, ...; inputs beyond ``d_active`` are 0 while ``w`` keeps all ``d``
    coordinates. `workbench.train.TrainConfig` applies it to the training batches
    (``curriculum``); evaluations use the full task.
    """

    dims: Schedule
    points: Schedule

    def __post_init__(self) -> None:
        for name in ("dims", "points"):
            if not isinstance(getattr(self, name), Schedule):
                raise ValueError(
                    f"curriculum.{name} must be a Schedule, got {getattr(self, name)!r}"
                )

    def check_base(self, base: LinearRegressionICL) -> None:
        """Raise ``ValueError`` naming ``curriculum`` when the schedules end beyond ``base``'s
        dimension or number of points (a model is sized for ``base``)."""
        if self.dims.end > base.d or self.points.end > base.n_points:
            raise ValueError(
                f"curriculum must end within the task (dims.end {self.dims.end} <= d {base.d}, "
                f"points.end {self.points.end} <= n_points {base.n_points})"
            )

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"dims": self.dims.to_dict(), "points": self.points.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """``{"dims": {start, end, increment, interval}, "points": {...}}`` (``ValueError`` naming
        ``curriculum``)."""
        fields = _fields_of(cls, data, "curriculum")
        return cls(
            dims=Schedule.from_dict(fields["dims"], "curriculum.dims"),
            points=Schedule.from_dict(fields["points"], "curriculum.points"),
        )

    @classmethod
    def garg(cls) -> Curriculum:
        """Garg et al.'s schedule: dims 5 -> 20 (+1), points 11 -> 41 (+2), every 2000 steps."""
        return cls(dims=Schedule(5, 20, 1, 2000), points=Schedule(11, 41, 2, 2000))

    def task_at(self, step: int, base: LinearRegressionICL) -> LinearRegressionICL:
        """``base`` with ``d_active`` and ``n_points`` set for ``step`` (validated)."""
        return dataclasses.replace(
            base, d_active=self.dims.value_at(step), n_points=self.points.value_at(step)
        )


def _fields_of(cls: type, data: Any, name: str) -> dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``cls``: exactly its fields (``ValueError``
    naming ``name`` otherwise)."""
    fields = [field.name for field in dataclasses.fields(cls)]
    if not isinstance(data, Mapping) or sorted(data) != sorted(fields):
        raise ValueError(f"{name} must be a mapping with the keys {fields}, got {data!r}")
    return dict(data)

"""The registry of evaluation metrics (`eval_metric`), in the style of the method and task
registries: a metric is a function of one captured layer (`workbench.capture.LayerCapture`), the
evaluation chunk and the run's config, registered under the name `TrainConfig.eval_metrics` uses.
The bundled ones (``attention``, ``stability``) live in `workbench.train.evaluation`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from toy_tasks.base import Batch
    from workbench.capture import LayerCapture


@dataclass(frozen=True)
class EvalRows:
    """Per-row values of one captured layer: ``rows[group][statistic]`` ``[batch, heads, seq]``
    (logged, after averaging over the scored positions, as ``record[group][statistic][layer]``),
    and ``pooled[group][statistic]`` ``[n]``: values whose distribution over every layer, head and
    row of the evaluation is logged as percentiles, ``record[group][statistic] = {"q<level>":
    value}`` (levels `POOLED_PERCENTILES`)."""

    layer: int
    rows: dict[str, dict[str, torch.Tensor]]
    pooled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


POOLED_PERCENTILES = (0, 5, 10, 25, 50, 75, 90, 95, 100)
"""Percentiles logged for `EvalRows.pooled` values (numpy's linear interpolation)."""


EvalMetric = Callable[["LayerCapture", "Batch", Any], EvalRows]
"""``metric(capture, batch, config)``: the rows of one layer of the evaluation chunk ``batch``
(``config``: the run's `workbench.train.TrainConfig`)."""

_EVAL_METRICS: dict[str, EvalMetric] = {}


def eval_metric(name: str) -> Callable[[EvalMetric], EvalMetric]:
    """Decorator registering an evaluation metric under ``name``."""

    def register(function: EvalMetric) -> EvalMetric:
        if name in _EVAL_METRICS:
            raise ValueError(f"an evaluation metric {name!r} is already registered")
        _EVAL_METRICS[name] = function
        return function

    return register


def names() -> list[str]:
    """Names of the registered evaluation metrics, sorted."""
    return sorted(_EVAL_METRICS)


def get_eval_metric(name: str) -> EvalMetric:
    """The metric registered as ``name`` (``ValueError`` naming the registered ones otherwise)."""
    if name not in _EVAL_METRICS:
        raise ValueError(f"unknown evaluation metric {name!r}; registered: {', '.join(names())}")
    return _EVAL_METRICS[name]

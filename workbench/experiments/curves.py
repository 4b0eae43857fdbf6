"""Figure helpers shared by the analyses of `workbench.experiments`: metric curves of runs, the
relevant-mass curves, run labels from config paths."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from workbench.experiments.base import RunRecord
from workbench.experiments.spec import get_path
from workbench.runs import metric_series
from workbench.viz.experiments import curves_figure
from workbench.viz.style import Style


def config_label(config: Mapping[str, Any], paths: Mapping[str, str]) -> str:
    """``"T=64 B=4"`` from the values at ``paths`` (``{name: config path}``)."""
    return " ".join(f"{name}={get_path(config, path)}" for name, path in paths.items())


def curve_figure(
    runs: list[RunRecord],
    key: str,
    group: Callable[[RunRecord], str],
    style: Callable[[RunRecord], Style],
    *,
    panel: Callable[[RunRecord], str] | None = None,
    **layout: Any,
) -> Any | None:
    """`curves_figure` of metric ``key`` of every run that logged it (None if none did): one
    legend entry per ``group(run)`` drawn in ``style(run)``, one subplot per ``panel(run)``."""
    curves = {run.config_hash: metric_series(run.metrics(), key) for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0].size}
    if not curves:
        return None
    groups = {run.config_hash: group(run) for run in runs}
    styles = {group(run): style(run) for run in runs}
    panels = {run.config_hash: panel(run) for run in runs} if panel else None
    return curves_figure(curves, groups=groups, styles=styles, panels=panels, y_title=key, **layout)


def present_figures(**figures: Any) -> dict[str, Any]:
    """The figures that are not None."""
    return {name: figure for name, figure in figures.items() if figure is not None}


def task_settings(task: str | Mapping[str, Any]) -> dict[str, Any]:
    """A config's ``task`` (a name, or a mapping with ``name``) as a mapping."""
    return dict(task) if isinstance(task, Mapping) else {"name": task}

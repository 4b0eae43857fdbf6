"""Figures of the softmax-stability metrics logged during training (`workbench.metrics.stability`).

figures = stability_figures({"run-a": records_a, "run-b": records_b}, groups={...})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.metrics.stability import ROW_STATISTICS, stability_series
from workbench.viz.experiments import curves_figure

TITLES = {
    "jacobian_norm": "||J||_2 of the dense softmax (mean over heads)",
    "method_jacobian_norm": "||J||_2 of the softmax over the method's selection (mean over heads)",
    "top_k_margin": "top-k margin: smallest inf-norm score change of the top-k set",
}


def stability_figures(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], groups: Mapping[str, str] | None = None
) -> dict[str, go.Figure]:
    """``{"stability_<name>": figure}`` per logged statistic: one curve per run (``{label:
    metrics records}``) and layer, the mean over the heads against the step; ``groups`` (``{label:
    group}``) colours the runs of a group alike."""
    figures = {}
    for name in ROW_STATISTICS:
        curves, curve_groups = {}, {}
        for label, records in runs.items():
            steps, values = stability_series(records, name)  # [m], [m, layers, heads]
            for layer in range(values.shape[1] if steps.size else 0):
                curves[f"{label} layer {layer}"] = (steps, values[:, layer].mean(axis=-1))
                group = (groups or {}).get(label, label)
                curve_groups[f"{label} layer {layer}"] = f"{group} layer {layer}"
        if curves:
            figures[f"stability_{name}"] = curves_figure(
                curves, groups=curve_groups, title=TITLES[name], y_title=name
            )
    return figures

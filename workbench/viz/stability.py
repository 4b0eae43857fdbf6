"""Figures of the softmax-stability metrics logged during training (`workbench.metrics.stability`).

figures = stability_figures({"run-a": records_a, "run-b": records_b}, groups={...})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.metrics.stability import ROW_STATISTICS
from workbench.runs import attention_series
from workbench.viz.experiments import curves_figure
from workbench.viz.style import Style, method_style

TITLES = {
    "jacobian_norm": "||J||_2 of the dense softmax (mean over heads)",
    "method_jacobian_norm": "||J||_2 of the softmax over the method's selection (mean over heads)",
    "top_k_margin": "top-k margin: smallest inf-norm score change of the top-k set",
}


def stability_figures(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    groups: Mapping[str, str] | None = None,
    *,
    styles: Mapping[str, Style] | None = None,
    panels: Mapping[str, str] | None = None,
) -> dict[str, go.Figure]:
    """``{"stability_<name>": figure}`` per logged statistic: one curve per run (``{label:
    metrics records}``) and layer, the mean over the heads against the step. ``groups``
    (``{label: group}``, e.g. the run's method) draws the runs of a group alike; ``styles``
    (``{label: Style}``) gives a run's colour (default: `method_style` of its group, so a group
    named by a method takes that method's colour), the layer its dash; ``panels`` (``{label:
    panel}``, e.g. the task) puts the runs of each panel in a subplot of their own."""
    figures = {}
    for name in ROW_STATISTICS:
        curves, curve_groups, curve_styles, curve_panels = {}, {}, {}, {}
        for label, records in runs.items():
            steps, values = attention_series(
                records, name, group="stability"
            )  # [m], [m, layers, heads]
            group = (groups or {}).get(label, label)
            style = (styles or {}).get(label) or method_style(group)
            for layer in range(values.shape[1] if steps.size else 0):
                curve = f"{label} layer {layer}"
                curves[curve] = (steps, values[:, layer].mean(axis=-1))
                curve_groups[curve] = f"{group} layer {layer}"
                curve_styles[f"{group} layer {layer}"] = style.for_layer(layer)
                curve_panels[curve] = (panels or {}).get(label, "")
        if curves:
            figures[f"stability_{name}"] = curves_figure(
                curves,
                groups=curve_groups,
                styles=curve_styles,
                panels=curve_panels,
                title=TITLES[name],
                y_title=name,
            )
    return figures

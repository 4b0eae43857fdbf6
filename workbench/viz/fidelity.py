"""Figures of `workbench.metrics.fidelity` reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import method_colour


def fidelity_figure(reports: Sequence[Mapping[str, Any]], title: str = "") -> go.Figure:
    """Left: density against attention recall, one point per method; right: local (teacher-forced,
    mean over layers) and end-to-end output error per method (local bars hatched), each method in
    its fixed colour (`workbench.viz.style.method_colour`). ``reports``: `FidelityReport.to_dict`
    dicts (as written to ``results.json``)."""
    names = [report["method"] for report in reports]
    colours = [method_colour(name) for name in names]
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("density vs recall (mean over layers)", "relative output error"),
    )
    figure.add_trace(
        go.Scatter(
            x=[report["mean_density"] for report in reports],
            y=[report["mean_recall"] for report in reports],
            mode="markers+text",
            text=names,
            textposition="top center",
            name="methods",
            showlegend=False,
            marker={"color": colours, "size": 10},
        ),
        row=1,
        col=1,
    )
    for label, key, hatch in (
        ("local (hatched)", "mean_local_output_error", "/"),
        ("end-to-end", "output_error", ""),
    ):
        values = [report[key] for report in reports]
        marker = {"color": colours, "pattern": {"shape": hatch, "fgcolor": "white"}}
        figure.add_trace(go.Bar(x=names, y=values, name=label, marker=marker), row=1, col=2)
    figure.update_xaxes(
        title_text="density (kept / visible entries)", range=[0, 1.05], row=1, col=1
    )
    figure.update_yaxes(title_text="recall (dense mass kept)", range=[0, 1.05], row=1, col=1)
    figure.update_yaxes(title_text="||sparse - dense|| / ||dense||", row=1, col=2)
    figure.update_layout(title=title or "sparse-attention fidelity", barmode="group")
    return figure

"""Figures of `workbench.metrics.fidelity` reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import method_colour

SAME_POINT = 0.01
"""Points of the density-recall plot closer than this in both coordinates share one label."""


def point_labels(xs: Sequence[float], ys: Sequence[float], names: Sequence[str]) -> list[str]:
    """One label per point: the names of every point within `SAME_POINT` of it (in order), on the
    first of them; the others get ``""`` (so that coincident labels are not drawn on each other)."""
    labels = []
    for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
        near = [
            other
            for other, (x2, y2) in enumerate(zip(xs, ys, strict=True))
            if abs(x2 - x) < SAME_POINT and abs(y2 - y) < SAME_POINT
        ]
        labels.append(", ".join(names[other] for other in near) if near[0] == index else "")
    return labels


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
    densities = [report["mean_density"] for report in reports]
    recalls = [report["mean_recall"] for report in reports]
    figure.add_trace(
        go.Scatter(
            x=densities,
            y=recalls,
            mode="markers+text",
            text=point_labels(densities, recalls, names),
            textposition=["top left" if x > 0.8 else "top center" for x in densities],
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
    figure.update_yaxes(title_text="recall (dense mass kept)", range=[0, 1.12], row=1, col=1)
    figure.update_yaxes(title_text="||sparse - dense|| / ||dense||", row=1, col=2)
    figure.update_layout(title=title or "sparse-attention fidelity", barmode="group")
    return figure


def decode_fidelity_figure(reports: Sequence[Mapping[str, Any]], title: str = "") -> go.Figure:
    """Decoding-time fidelity (`workbench.metrics.decoding.DecodeFidelity.to_dict` dicts): left,
    ``KL(dense || sparse)`` of each decoded token's next-token distribution; right, the fraction
    of the cached keys kept at each step; one line per method in its fixed colour."""
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("KL(dense || sparse) per decoded token", "kept fraction of cached keys"),
    )
    for report in reports:
        colour = method_colour(report["method"])
        steps = list(range(1, len(report["kl_by_token"]) + 1))
        for column, key in ((1, "kl_by_token"), (2, "density_by_token")):
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=report[key],
                    mode="lines+markers",
                    name=report["method"],
                    legendgroup=report["method"],
                    showlegend=column == 1,
                    line={"color": colour},
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(title_text="decoded token", row=1, col=1)
    figure.update_xaxes(title_text="decoded token", row=1, col=2)
    figure.update_yaxes(title_text="KL (nats)", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="kept / visible keys", range=[0, 1.05], row=1, col=2)
    figure.update_layout(title=title or "sparse attention at decoding time")
    return figure

"""Figures of experiment analyses: training curves and power-law fits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots


def curves_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_title: str = "step",
    y_title: str = "",
    log_x: bool = False,
    log_y: bool = False,
    groups: Mapping[str, str] | None = None,
    reference: float | None = None,
) -> go.Figure:
    """One line per ``{label: (x [n], y [n])}``. ``groups`` (``{label: group}``) colours the
    lines of one group alike and shows one legend entry per group; ``reference`` draws a
    horizontal dashed line (e.g. an emergence threshold)."""
    figure = go.Figure()
    palette = qualitative.Plotly
    group_of = dict(groups or {label: label for label in curves})
    colours = {
        group: palette[i % len(palette)] for i, group in enumerate(dict.fromkeys(group_of.values()))
    }
    shown: set[str] = set()
    for label, (x, y) in curves.items():
        group = group_of.get(label, label)
        figure.add_trace(
            go.Scatter(
                x=list(x),
                y=list(y),
                mode="lines",
                name=group,
                legendgroup=group,
                showlegend=group not in shown,
                line={"color": colours.get(group)},
                hovertext=label,
            )
        )
        shown.add(group)
    if reference is not None:
        figure.add_hline(y=reference, line_dash="dash", line_color="grey")
    figure.update_xaxes(title_text=x_title, type="log" if log_x else "linear")
    figure.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    figure.update_layout(title=title, template="plotly_white")
    return figure


_LOWER_BOUND_MARKER = {"symbol": "triangle-up-open", "size": 10}
"""Marker of a censored point: the value is a lower bound."""


def _split_by_bound(
    indices: Iterable[int], lower_bound: Sequence[bool]
) -> Iterator[tuple[bool, list[int]]]:
    """``(False, exact points)`` then ``(True, lower bounds)`` among ``indices``, skipping empty."""
    indices = list(indices)
    for bound in (False, True):
        points = [i for i in indices if lower_bound[i] == bound]
        if points:
            yield bound, points


def _point_marker(colour: str, bound: bool) -> dict[str, Any]:
    return {"color": colour, **(_LOWER_BOUND_MARKER if bound else {})}


def power_law_figure(
    covariates: Mapping[str, Sequence[float]],
    observed: Sequence[float],
    predicted: Sequence[float],
    *,
    formula: str,
    x_name: str,
    y_title: str = "emergence time (steps)",
    censored: Sequence[bool] | None = None,
) -> go.Figure:
    """Left: log-log scatter of ``observed [n]`` against covariate ``x_name``, one colour per
    combination of the other covariates, with the fitted law as lines; right: observed against
    fitted (``predicted [n]``) with the diagonal. ``covariates``: ``{name: [n] values}``;
    ``censored`` ``[n]``: True where ``observed`` is only a lower bound (drawn as open triangles:
    later than that, if ever)."""
    lower_bound = list(censored) if censored is not None else [False] * len(observed)
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=(f"{y_title} vs {x_name}", f"observed vs fit: {formula}")
    )
    others = [name for name in covariates if name != x_name]
    keys = [tuple(covariates[name][i] for name in others) for i in range(len(observed))]
    palette = qualitative.Plotly
    for colour_index, key in enumerate(dict.fromkeys(keys)):
        rows = [i for i, k in enumerate(keys) if k == key]
        order = sorted(rows, key=lambda i: covariates[x_name][i])
        label = ", ".join(f"{name}={value:g}" for name, value in zip(others, key, strict=True))
        colour = palette[colour_index % len(palette)]
        x = [covariates[x_name][i] for i in order]
        for bound, points in _split_by_bound(order, lower_bound):
            figure.add_trace(
                go.Scatter(
                    x=[covariates[x_name][i] for i in points],
                    y=[observed[i] for i in points],
                    mode="markers",
                    name=f"{label or 'runs'}: not yet at" if bound else label or "runs",
                    legendgroup=label,
                    showlegend=not bound,
                    marker=_point_marker(colour, bound),
                ),
                row=1,
                col=1,
            )
        figure.add_trace(
            go.Scatter(
                x=x,
                y=[predicted[i] for i in order],
                mode="lines",
                name=f"fit {label}",
                legendgroup=label,
                showlegend=False,
                line={"color": colour},
            ),
            row=1,
            col=1,
        )
    bounds = [float(np.min([*observed, *predicted])), float(np.max([*observed, *predicted]))]
    for bound, points in _split_by_bound(range(len(observed)), lower_bound):
        figure.add_trace(
            go.Scatter(
                x=[predicted[i] for i in points],
                y=[observed[i] for i in points],
                mode="markers",
                name="lower bounds" if bound else "runs",
                showlegend=bound,
                marker=_point_marker("black", bound),
            ),
            row=1,
            col=2,
        )
    figure.add_trace(
        go.Scatter(
            x=bounds,
            y=bounds,
            mode="lines",
            name="y = fit",
            line={"dash": "dash"},
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    figure.update_xaxes(type="log", title_text=x_name, row=1, col=1)
    figure.update_xaxes(type="log", title_text="fitted", row=1, col=2)
    figure.update_yaxes(type="log", title_text=y_title, row=1, col=1)
    figure.update_yaxes(type="log", title_text="observed", row=1, col=2)
    figure.update_layout(template="plotly_white")
    return figure


def table_figure(rows: Sequence[Mapping[str, Any]], *, title: str) -> go.Figure:
    """A plotly table of ``rows`` (dicts with the same keys; floats shown with 3 decimals)."""
    columns = list(rows[0]) if rows else []

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    values = [[cell(row[column]) for row in rows] for column in columns]
    figure = go.Figure(go.Table(header={"values": columns}, cells={"values": values}))
    figure.update_layout(title=title)
    return figure

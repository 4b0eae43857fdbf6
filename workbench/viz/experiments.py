"""Figures of experiment analyses: training curves, power-law fits and summary tables.

Colours, dashes and symbols come from `workbench.viz.style`: a caller passes the `Style` of each
group (a method's, a task's, a sweep point's), so a method keeps its colour from one figure to the
next; without styles the groups take `category_styles` (fixed by the set of groups, not by the
order of the curves).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.runs import attention_series
from workbench.viz.style import (
    NEUTRAL_COLOUR,
    Style,
    category_styles,
    method_style,
    natural_key,
    rgba,
    sweep_styles,
)


@dataclass(frozen=True)
class Level:
    """A horizontal line on a curves figure (a threshold), named in the legend.

    ``panel``: only in that panel (None: in every panel); ``curve``: the level of that curve only,
    drawn dotted in the curve's colour over its steps (e.g. a threshold relative to each run's
    initial loss)."""

    y: float
    name: str
    panel: str | None = None
    curve: str | None = None


@dataclass(frozen=True)
class Mark:
    """A point on a curve: an event such as a threshold crossing.

    ``kind`` names the legend entry of the marks alike (e.g. ``"emergence time"``); ``bound``: the
    event had not happened by ``x`` (a censored run), drawn as an open triangle."""

    curve: str
    x: float
    y: float
    text: str
    kind: str
    bound: bool = False


BOUND_SYMBOL = "triangle-right-open"
"""Marker of a `Mark` whose event had not happened by its step (later, if ever)."""


def curves_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_title: str = "step",
    y_title: str = "",
    log_x: bool = False,
    log_y: bool = False,
    groups: Mapping[str, str] | None = None,
    styles: Mapping[str, Style] | None = None,
    panels: Mapping[str, str] | None = None,
    reference: float | None = None,
    levels: Sequence[Level] = (),
    marks: Sequence[Mark] = (),
) -> go.Figure:
    """One line per ``{label: (x [n], y [n])}``.

    Args:
        groups: ``{label: group}``: the lines of one group are drawn alike under one legend entry
            (default: each label is its own group).
        styles: ``{group: Style}`` (`workbench.viz.style`); a group without one takes its
            `category_styles` among all the groups.
        panels: ``{label: panel title}``: one subplot per panel, side by side with a shared y
            axis (e.g. one per task); a group keeps its style and its one legend entry.
        reference: a horizontal dashed line at that value (``Level(reference, "reference")``).
        levels: horizontal lines (thresholds), named in the legend.
        marks: points on the curves (events), in their curve's colour.
    """
    group_of = {label: (groups or {}).get(label, label) for label in curves}
    fallback = category_styles(group_of.values())
    style_of = {
        label: (styles or {}).get(group, fallback[group]) for label, group in group_of.items()
    }
    panel_of = {label: (panels or {}).get(label, "") for label in curves}
    names = sorted(set(panel_of.values()), key=natural_key) or [""]
    if len(names) > 1:
        figure = make_subplots(
            rows=1,
            cols=len(names),
            shared_yaxes=True,
            subplot_titles=names,
            horizontal_spacing=0.04,
        )
    else:
        figure = go.Figure()

    def add(trace: go.Scatter, panel: str) -> None:
        if len(names) > 1:
            figure.add_trace(trace, row=1, col=names.index(panel) + 1)
        else:
            figure.add_trace(trace)

    # The legend lists the groups in natural order, then the levels and marks (rank 1000).
    rank = {group: index + 1 for index, group in enumerate(sorted(fallback, key=natural_key))}
    shown: set[str] = set()
    for label, (x, y) in curves.items():
        group = group_of[label]
        add(
            go.Scatter(
                x=list(x),
                y=list(y),
                mode="lines",
                name=group,
                legendgroup=group,
                legendrank=rank[group],
                showlegend=group not in shown,
                line=style_of[label].line(),
                hovertext=label,
            ),
            panel_of[label],
        )
        shown.add(group)
    if reference is not None:
        levels = [*levels, Level(reference, "reference")]
    for level in levels:
        for panel, x, line in _level_lines(level, curves, panel_of, names, style_of, log_x):
            add(
                go.Scatter(
                    x=x,
                    y=[level.y, level.y],
                    mode="lines",
                    name=level.name,
                    legendgroup=f"level: {level.name}",
                    showlegend=f"level: {level.name}" not in shown,
                    line=line,
                    hoverinfo="name+y",
                ),
                panel,
            )
            shown.add(f"level: {level.name}")
    for (panel, kind, bound), group_marks in _group_marks(marks, panel_of).items():
        add(
            go.Scatter(
                x=[mark.x for mark in group_marks],
                y=[mark.y for mark in group_marks],
                mode="markers",
                name=kind,
                legendgroup=f"marks: {kind}",
                showlegend=f"marks: {kind}" not in shown,
                marker=_mark_marker([style_of[mark.curve] for mark in group_marks], bound),
                hovertext=[mark.text for mark in group_marks],
                hoverinfo="text",
            ),
            panel,
        )
        shown.add(f"marks: {kind}")
    figure.update_xaxes(title_text=x_title, type="log" if log_x else "linear")
    figure.update_yaxes(type="log" if log_y else "linear")
    if len(names) > 1:
        figure.update_yaxes(title_text=y_title, row=1, col=1)
    else:
        figure.update_yaxes(title_text=y_title)
    figure.update_layout(title=title, template="plotly_white")
    return figure


def relevant_mass_figure(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    groups: Mapping[str, str] | None = None,
    *,
    styles: Mapping[str, Style] | None = None,
) -> go.Figure | None:
    """Per run (``{label: metrics records}``, `workbench.runs` schema) and layer, the largest
    ``attention.relevant_mass`` over the heads against the step (None when no run logged it).
    ``groups`` (``{label: group}``) draws the runs of a group alike under one legend entry per
    layer; ``styles`` (``{label: Style}``) gives a run's colour (default: `method_style` of its
    group), the layer its dash."""
    curves, curve_groups, curve_styles = {}, {}, {}
    for label, records in runs.items():
        steps, values = attention_series(records, "relevant_mass")  # [m], [m, layers, heads]
        group = (groups or {}).get(label, label)
        style = (styles or {}).get(label) or method_style(group)
        for layer in range(values.shape[1] if steps.size else 0):
            curve = f"{label} layer {layer}"
            curves[curve] = (steps, values[:, layer].max(axis=-1))
            curve_groups[curve] = f"{group} layer {layer}"
            curve_styles[f"{group} layer {layer}"] = style.for_layer(layer)
    if not curves:
        return None
    return curves_figure(
        curves,
        groups=curve_groups,
        styles=curve_styles,
        title="relevant mass (best head per layer; line dash: layer)",
        y_title="mass",
    )


def _level_lines(
    level: Level,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    panel_of: Mapping[str, str],
    panels: Sequence[str],
    style_of: Mapping[str, Style],
    log_x: bool,
) -> Iterator[tuple[str, list[float], dict[str, Any]]]:
    """``(panel, [x0, x1], line)`` of each segment of ``level``: across the steps of the curves
    of each panel, or of its one curve (dotted, in the curve's colour)."""

    def span(labels: Iterable[str]) -> list[float] | None:
        xs = [float(value) for label in labels for value in curves[label][0]]
        xs = [value for value in xs if np.isfinite(value) and (value > 0 or not log_x)]
        return [min(xs), max(xs)] if xs else None

    if level.curve is not None:
        if level.curve in curves and (x := span([level.curve])):
            colour = style_of[level.curve].colour
            yield panel_of[level.curve], x, {"color": colour, "dash": "dot", "width": 1}
        return
    for panel in panels if level.panel is None else [level.panel]:
        x = span(label for label in curves if panel_of[label] == panel)
        if x:
            yield panel, x, {"color": NEUTRAL_COLOUR, "dash": "dash", "width": 1.5}


def _group_marks(
    marks: Sequence[Mark], panel_of: Mapping[str, str]
) -> dict[tuple[str, str, bool], list[Mark]]:
    """The marks by (panel of their curve, kind, bound), in their order."""
    grouped: dict[tuple[str, str, bool], list[Mark]] = {}
    for mark in marks:
        if mark.curve not in panel_of:
            raise KeyError(f"mark on an unknown curve {mark.curve!r}")
        grouped.setdefault((panel_of[mark.curve], mark.kind, mark.bound), []).append(mark)
    return grouped


def _mark_marker(styles: Sequence[Style], bound: bool) -> dict[str, Any]:
    colours = [style.colour for style in styles]
    if bound:
        return {"color": colours, "symbol": BOUND_SYMBOL, "size": 11, "line": {"width": 2}}
    return {
        "color": colours,
        "symbol": "circle",
        "size": 9,
        "line": {"color": "white", "width": 1.5},
    }


_LOWER_BOUND_MARKER = {"symbol": "triangle-up-open", "size": 10}
"""Marker of a censored point of a fit: the value is a lower bound."""


def _split_by_bound(
    indices: Iterable[int], lower_bound: Sequence[bool]
) -> Iterator[tuple[bool, list[int]]]:
    """``(False, exact points)`` then ``(True, lower bounds)`` among ``indices``, skipping empty."""
    indices = list(indices)
    for bound in (False, True):
        points = [i for i in indices if lower_bound[i] == bound]
        if points:
            yield bound, points


def _point_marker(colours: Sequence[str] | str, bound: bool) -> dict[str, Any]:
    return {"color": colours, **(_LOWER_BOUND_MARKER if bound else {"size": 8})}


def power_law_figure(
    covariates: Mapping[str, Sequence[float]],
    observed: Sequence[float],
    predicted: Sequence[float],
    *,
    formula: str,
    x_name: str,
    y_title: str = "emergence time (steps)",
    censored: Sequence[bool] | None = None,
    interval: Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]] | None = None,
    confidence: float = 0.95,
    reference_exponent: float | None = None,
    reference_name: str = "paper",
    styles: Sequence[Style] | None = None,
) -> go.Figure:
    """Left: log-log scatter of ``observed [n]`` against covariate ``x_name``, one hue per
    combination of the other covariates (shaded by ``x_name``: `sweep_styles`, or ``styles``
    ``[n]``), with the fitted law as solid lines, its ``confidence`` interval as a band
    (``interval``: covariates ``{name: [m] values}`` -> ``(low [m], high [m])`` of the fitted
    value, e.g. `PowerLawFit.predict_interval`), and the reference slope
    (``reference_exponent``, e.g. the paper's) as a dashed line through the fit at the centre of
    each line's ``x_name`` range (log scale); right: observed against fitted (``predicted [n]``)
    with the diagonal. ``covariates``: ``{name: [n] values}``; ``censored [n]``: True where
    ``observed`` is only a lower bound (drawn as open triangles: later than that, if ever)."""
    n = len(observed)
    lower_bound = list(censored) if censored is not None else [False] * n
    others = [name for name in covariates if name != x_name]
    points = [{name: covariates[name][i] for name in covariates} for i in range(n)]
    styles = list(styles) if styles is not None else sweep_styles(points, x_name)
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=(f"{y_title} vs {x_name}", f"observed vs fit: {formula}")
    )
    keys = [tuple(covariates[name][i] for name in others) for i in range(n)]
    shown: set[str] = set()
    for key in sorted(dict.fromkeys(keys), key=lambda key: natural_key(str(key))):
        rows = sorted((i for i in range(n) if keys[i] == key), key=lambda i: covariates[x_name][i])
        fixed = dict(zip(others, key, strict=True))  # the other covariates of this line
        label = ", ".join(f"{name}={value:g}" for name, value in fixed.items()) or "runs"
        colour = styles[rows[-1]].colour  # the largest x: the full colour of its hue
        x = [covariates[x_name][i] for i in rows]
        if interval is not None:
            grid = np.geomspace(min(x), max(x), 50)
            low, high = interval(
                {x_name: grid, **{name: np.full(50, value) for name, value in fixed.items()}}
            )
            for trace in _band(grid, low, high):
                trace.update(
                    line={"width": 0},
                    fillcolor=rgba(colour, 0.15),
                    legendgroup="interval",
                    name=f"fit, {confidence:.0%} interval",
                    showlegend=trace.fill is not None and "interval" not in shown,
                    hoverinfo="skip",
                )
                figure.add_trace(trace, row=1, col=1)
            shown.add("interval")
        figure.add_trace(
            go.Scatter(
                x=x,
                y=[predicted[i] for i in rows],
                mode="lines",
                name=f"fit, {label}",
                legendgroup=label,
                line={"color": colour},
            ),
            row=1,
            col=1,
        )
        if reference_exponent is not None and len(x) > 1:
            figure.add_trace(
                _reference_line(x, [predicted[i] for i in rows], reference_exponent).update(
                    name=f"{reference_name}: slope {x_name}^{reference_exponent:.2f}",
                    legendgroup="reference",
                    showlegend="reference" not in shown,
                    line={"color": colour, "dash": "dash"},
                ),
                row=1,
                col=1,
            )
            shown.add("reference")
        for bound, chosen in _split_by_bound(rows, lower_bound):
            figure.add_trace(
                go.Scatter(
                    x=[covariates[x_name][i] for i in chosen],
                    y=[observed[i] for i in chosen],
                    mode="markers",
                    name=f"{label}: not yet at" if bound else label,
                    legendgroup=label,
                    showlegend=False,
                    marker=_point_marker([styles[i].colour for i in chosen], bound),
                ),
                row=1,
                col=1,
            )
    bounds = [float(np.min([*observed, *predicted])), float(np.max([*observed, *predicted]))]
    for bound, chosen in _split_by_bound(range(n), lower_bound):
        figure.add_trace(
            go.Scatter(
                x=[predicted[i] for i in chosen],
                y=[observed[i] for i in chosen],
                mode="markers",
                name="lower bounds (not emerged yet)" if bound else "runs",
                showlegend=bound,
                marker=_point_marker([styles[i].colour for i in chosen], bound),
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
            line={"dash": "dash", "color": NEUTRAL_COLOUR},
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


def exponents_by_range_figure(
    fits: Sequence[tuple[float, Mapping[str, Any] | None]],
    paper: Mapping[str, float],
    *,
    covariate: str = "T",
    paper_name: str = "paper",
) -> go.Figure:
    """The exponents of power-law fits over narrowing ranges of one covariate: ``fits`` ``[(the
    smallest value of ``covariate`` fitted, fit dict (`PowerLawFit.to_dict`) or None)]``; one
    line per exponent with its interval as error bars, the ``paper``'s value of each dashed in
    the same colour. A single power law gives flat lines."""
    names = sorted({name for _, fit in fits if fit for name in fit["exponents"]}, key=natural_key)
    styles = category_styles(names)
    figure = go.Figure()
    for name in names:
        points = [(x, fit) for x, fit in fits if fit and name in fit["exponents"]]
        values = [fit["exponents"][name] for _, fit in points]
        lows = [fit["exponents"][name] - fit["intervals"][name][0] for _, fit in points]
        highs = [fit["intervals"][name][1] - fit["exponents"][name] for _, fit in points]
        figure.add_trace(
            go.Scatter(
                x=[x for x, _ in points],
                y=values,
                mode="lines+markers",
                name=f"exponent of {name}",
                line=styles[name].line(),
                marker=styles[name].marker(size=8),
                error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows},
            )
        )
        if name in paper:
            figure.add_hline(
                y=paper[name],
                line={"color": styles[name].colour, "dash": "dash", "width": 1},
                annotation_text=f"{paper_name}: {name}^{paper[name]:g}",
                annotation_position="top left",
            )
    ticks = sorted({x for x, _ in fits})
    figure.update_xaxes(title_text=f"shortest {covariate} in the fit", type="log", tickvals=ticks)
    figure.update_yaxes(title_text="exponent (95% interval)")
    figure.update_layout(
        title=f"the fit's exponents over {covariate} >= x: a single power law gives flat lines"
    )
    return figure


def _band(x: Sequence[float], low: Sequence[float], high: Sequence[float]) -> list[go.Scatter]:
    """The upper edge, then the lower edge filled up to it."""
    return [
        go.Scatter(x=list(x), y=list(high), mode="lines"),
        go.Scatter(x=list(x), y=list(low), mode="lines", fill="tonexty"),
    ]


def _reference_line(x: Sequence[float], fitted: Sequence[float], exponent: float) -> go.Scatter:
    """A line of slope ``exponent`` (log-log) through the fitted line at the geometric centre of
    ``x``: ``y = y_fit(x_c) (x / x_c)^exponent``."""
    logs = np.log(np.asarray(x, dtype=np.float64))
    log_fitted = np.log(np.asarray(fitted, dtype=np.float64))
    centre = float(logs.mean())
    anchor = float(np.interp(centre, logs, log_fitted))  # the fit is linear in log x
    ends = np.array([logs.min(), logs.max()])
    return go.Scatter(
        x=np.exp(ends).tolist(),
        y=np.exp(anchor + exponent * (ends - centre)).tolist(),
        mode="lines",
    )


TABLE_CHARACTER_WIDTH = 7.5
"""Pixels per character of a table cell at plotly's default 12 px font (a digit is ~6.7 px)."""
TABLE_PADDING = 16
"""Horizontal padding of a table column, pixels."""
HEADER_LINE_LENGTH = 14
"""Header text is wrapped at spaces into lines of about this many characters."""


def header_lines(text: str, width: int = HEADER_LINE_LENGTH) -> list[str]:
    """``text`` wrapped at spaces into lines of at most ``width`` characters; a word longer than
    that stays whole on its line."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def table_column_widths(
    header: Sequence[Sequence[str]], cells: Sequence[Sequence[str]]
) -> list[float]:
    """Pixel width of each column: its longest header line or cell, at `TABLE_CHARACTER_WIDTH`
    per character, plus `TABLE_PADDING`."""
    return [
        TABLE_PADDING + TABLE_CHARACTER_WIDTH * max(len(line) for line in [*lines, *column])
        for lines, column in zip(header, cells, strict=True)
    ]


def table_cell(value: Any) -> str:
    """A cell: floats with 3 decimals, None as a dash, the rest as ``str``."""
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    headers: Mapping[str, str] | None = None,
    cell: Callable[[Any], str] = table_cell,
) -> go.Figure:
    """A plotly table of ``rows`` (dicts with the same keys), one column per key. ``headers``:
    ``{key: header text}`` (default: the key, underscores as spaces), wrapped into lines; each
    column is as wide as its longest header line or cell and the figure as wide as the columns,
    so no header is cut."""
    columns = list(rows[0]) if rows else []
    names = {column: (headers or {}).get(column, column.replace("_", " ")) for column in columns}
    header = [header_lines(names[column]) for column in columns]
    values = [[cell(row[column]) for row in rows] for column in columns]
    widths = table_column_widths(header, values)
    lines = max((len(lines) for lines in header), default=1)
    margin = {"l": 20, "r": 20, "t": 60, "b": 20}
    figure = go.Figure(
        go.Table(
            columnwidth=widths,
            header={
                "values": ["<br>".join(lines) for lines in header],
                "height": 18 * lines + 10,
                "align": "left",
                "fill_color": "#E8EDF3",
            },
            cells={"values": values, "align": "left", "height": 26},
        )
    )
    figure.update_layout(
        title=title,
        width=int(sum(widths)) + margin["l"] + margin["r"],
        height=margin["t"] + margin["b"] + 18 * lines + 10 + 26 * len(rows) + 20,
        margin=margin,
    )
    return figure

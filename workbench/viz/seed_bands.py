"""Curves summarised over seeds: the median as a line and the inter-quartile range as a band, in a
grid of panels (one row per metric, one column per task), laid out like the semantic-focus
paper's figures (arXiv 2506.14095, Figure 1: training loss above held-out accuracy, one column
per task, epochs on the x axis)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import Style, category_styles, natural_key, rgba

BAND_ALPHA = 0.18
"""Opacity of an inter-quartile band."""


@dataclass(frozen=True)
class SeedBand:
    """One group's curve over seeds: ``x`` ``[n]``, the ``median``, the 25th (``low``) and 75th
    (``high``) percentiles at each x, and ``runs``, how many runs each point summarises."""

    x: Sequence[float]
    median: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]
    runs: Sequence[int]

    def __post_init__(self) -> None:
        sizes = {len(self.x), len(self.median), len(self.low), len(self.high), len(self.runs)}
        if len(sizes) != 1:
            raise ValueError(
                f"x, median, low, high and runs must have one length, got {sorted(sizes)}"
            )


def seed_band_figure(
    panels: Mapping[str, Mapping[str, Mapping[str, SeedBand]]],
    *,
    title: str,
    x_title: str = "epoch",
    rows: Sequence[str] | None = None,
    log_y: Sequence[str] = (),
    styles: Mapping[str, Style] | None = None,
) -> go.Figure:
    """``panels[column][row][group]``: a grid with one column per key of ``panels`` (e.g. a task),
    one row per metric (``rows``, default: every row name in first-seen order), and in each panel
    one median line with its IQR band per group (e.g. an attention variant). A group keeps its
    `Style` (``styles``, else `category_styles`) and one legend entry; rows named in ``log_y``
    get a log y axis. Columns share their row's y axis."""
    columns = sorted(panels, key=natural_key)
    if rows is None:
        rows = list(dict.fromkeys(row for column in columns for row in panels[column]))
    groups = sorted(
        {group for column in columns for row in panels[column].values() for group in row},
        key=natural_key,
    )
    fallback = category_styles(groups)
    style_of = {group: (styles or {}).get(group, fallback[group]) for group in groups}
    figure = make_subplots(
        rows=max(len(rows), 1),
        cols=max(len(columns), 1),
        shared_xaxes=True,
        shared_yaxes=True,
        subplot_titles=columns,
        horizontal_spacing=0.03,
        vertical_spacing=0.06,
    )
    shown: set[str] = set()
    for col, column in enumerate(columns, start=1):
        for row_index, row in enumerate(rows, start=1):
            for group in groups:
                band = panels[column].get(row, {}).get(group)
                if band is None or not len(band.x):
                    continue
                for trace in _band_traces(band, group, style_of[group], group not in shown):
                    figure.add_trace(trace, row=row_index, col=col)
                shown.add(group)
    for row_index, row in enumerate(rows, start=1):
        figure.update_yaxes(
            title_text=row if len(columns) else None,
            type="log" if row in log_y else "linear",
            row=row_index,
            col=1,
        )
        for col in range(2, len(columns) + 1):
            figure.update_yaxes(type="log" if row in log_y else "linear", row=row_index, col=col)
    figure.update_xaxes(title_text=x_title, row=max(len(rows), 1))
    figure.update_layout(
        title=title,
        template="plotly_white",
        height=260 * max(len(rows), 1) + 120,
        width=max(420, 320 * len(columns) + 200),
    )
    return figure


def _band_traces(band: SeedBand, group: str, style: Style, legend: bool) -> list[go.Scatter]:
    """The IQR band (a closed filled polygon) and the median line of ``group``."""
    x = list(band.x)
    hover = [f"{group}: median of {count} runs" for count in band.runs]
    return [
        go.Scatter(
            x=x + x[::-1],
            y=list(band.high) + list(band.low)[::-1],
            mode="lines",
            fill="toself",
            fillcolor=rgba(style.colour, BAND_ALPHA),
            line={"width": 0},
            hoverinfo="skip",
            legendgroup=group,
            showlegend=False,
        ),
        go.Scatter(
            x=x,
            y=list(band.median),
            mode="lines",
            name=group,
            legendgroup=group,
            showlegend=legend,
            line=style.line(width=2),
            hovertext=hover,
        ),
    ]

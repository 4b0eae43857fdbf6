"""Small Dash building blocks shared by the tabs: messages, graphs, labelled controls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from dash import dcc, html

GRAPH_CONFIG = {"displaylogo": False, "scrollZoom": False}
ROW = {"display": "flex", "flexWrap": "wrap", "gap": "12px", "alignItems": "flex-end"}
MESSAGE_STYLES = {
    "error": {"background": "#FDECEA", "border": "1px solid #D62728", "color": "#7A1212"},
    "note": {"background": "#EEF3F8", "border": "1px solid #9DB3C9", "color": "#1F3A55"},
}
READ_FAILURES = (OSError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError)
"""What a panel shows as a message instead of failing: unreadable or half-written files, a
missing or damaged checkpoint, bad settings, what a method cannot do."""


def message(text: str, kind: str = "error") -> html.Div:
    """A boxed message (``kind``: ``"error"`` or ``"note"``)."""
    if kind not in MESSAGE_STYLES:
        raise ValueError(f"kind must be one of {sorted(MESSAGE_STYLES)}, got {kind!r}")
    style = {"padding": "6px 10px", "margin": "6px 0", "whiteSpace": "pre-wrap"}
    return html.Div(text, className=f"message {kind}", style={**style, **MESSAGE_STYLES[kind]})


def failure(error: BaseException, what: str) -> html.Div:
    """The message of a panel that could not be drawn."""
    return message(f"{what}: {type(error).__name__}: {error}")


def graph(figure: go.Figure, name: str, **props: Any) -> dcc.Graph:
    """A graph of ``figure`` (``name``: its ``id`` or a label of the graph's class) as wide as its
    place in the page: the width a builder sets for a standalone file is dropped (the figure is
    not changed)."""
    if figure.layout.width is not None:
        figure = go.Figure(figure)
        figure.layout.width = None
    return dcc.Graph(figure=figure, config=GRAPH_CONFIG, className=f"graph {name}", **props)


def labelled(label: str, control: Any, width: str = "180px") -> html.Div:
    """A control under its label."""
    return html.Div(
        [html.Label(label, style={"fontSize": "12px", "color": "#555"}), control],
        style={"width": width},
    )


def choices(values: Sequence[Any], label: str = "{}") -> list[dict[str, Any]]:
    """Dropdown options of ``values`` (labels formatted by ``label``)."""
    return [{"label": label.format(value), "value": value} for value in values]


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    row_styles: Sequence[Mapping[str, str]] | None = None,
    titles: Sequence[str | None] | None = None,
    id: str | None = None,
) -> html.Table:
    """An HTML table of ``rows`` with ``columns`` ``(key, header)``; ``row_styles``: a style per
    row, ``titles``: a tooltip per row."""
    border = {"borderBottom": "1px solid #ddd", "padding": "3px 8px", "textAlign": "left"}
    header = html.Tr(
        [html.Th(name, style=border | {"background": "#E8EDF3"}) for _, name in columns]
    )
    body = [
        html.Tr(
            [html.Td(cell(row.get(key)), style=border) for key, _ in columns],
            style=dict(row_styles[index]) if row_styles else None,
            title=titles[index] if titles and titles[index] else None,
        )
        for index, row in enumerate(rows)
    ]
    props = {} if id is None else {"id": id}
    return html.Table(
        [html.Thead(header), html.Tbody(body)],
        style={"borderCollapse": "collapse", "fontSize": "13px", "margin": "6px 0"},
        **props,
    )


def empty_figure(text: str) -> go.Figure:
    """A blank figure saying why it is blank."""
    figure = go.Figure()
    figure.update_layout(
        annotations=[{"text": text, "showarrow": False, "font": {"size": 14}}],
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=300,
    )
    return figure

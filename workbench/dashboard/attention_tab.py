"""The Attention tab: pick a source (a run's model or a saved trace), an example, a layer and a
head; the head's token-labelled pattern with the ground-truth relevant keys framed and a sparse
method's selection overlaid (changing the method or its hyper-parameters recomputes selection,
density, recall and output error); the per-head statistics as a layer x head grid whose cells
select their head. Long patterns are pooled for display; zooming in redraws the zoomed region at
full resolution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import yaml
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

import workbench.sparse
from workbench.dashboard import ids
from workbench.dashboard.data import AttentionSubject, Catalogue
from workbench.dashboard.panels import grid_figure, pattern_panel
from workbench.dashboard.widgets import (
    READ_FAILURES,
    ROW,
    choices,
    empty_figure,
    failure,
    graph,
    labelled,
    message,
)
from workbench.sparse.base import SparseMethod
from workbench.viz.attention import Window
from workbench.viz.trace import grid_cell

NONE = "none"
"""The method value that draws the pattern alone."""
DEFAULT_METHOD = "top_k"
BLOCK_SIZES = (16, 32, 64)
NO_STATISTIC = "–"


def method_settings(name: str) -> dict[str, Any]:
    """The hyper-parameters ``name`` starts from in the page: its settings for short inputs
    (`workbench.sparse.short_input`); a nested method by its name."""
    settings = workbench.sparse.short_input(name).hyper_parameters()
    return {
        key: value["name"] if isinstance(value, Mapping) else value
        for key, value in settings.items()
    }


def hparam_inputs(name: str | None) -> list[Any]:
    """One input per hyper-parameter of method ``name`` (numbers as numbers, the rest as text
    read as YAML: ``None``, names of methods), ids ``{"type": HPARAM, "method", "name"}``."""
    if name in (None, NONE):
        return []
    inputs = []
    for key, value in method_settings(name).items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        control = dcc.Input(
            id={"type": ids.HPARAM, "method": name, "name": key},
            type="number" if number else "text",
            value=value if number else ("None" if value is None else str(value)),
            debounce=True,
            step="any" if isinstance(value, float) else 1 if number else None,
            style={"width": "110px"},
        )
        inputs.append(labelled(key, control, width="120px"))
    return inputs


def parse_setting(value: Any) -> Any:
    """A hyper-parameter's value from its input: numbers as they are; text as a YAML scalar
    (``None``, an empty field and ``null`` are None)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    return None if text in ("", "None", "null") else yaml.safe_load(text)


def chosen_method(
    name: str | None, input_ids: Sequence[Mapping[str, str]], values: Sequence[Any]
) -> SparseMethod | None:
    """The method of the page's controls (None: the pattern alone). Raises `PreventUpdate` while
    the inputs still belong to the previous method (they are being replaced), ``ValueError``
    for a bad hyper-parameter (`workbench.sparse.get` names it)."""
    if name in (None, NONE):
        return None
    settings = {
        key["name"]: parse_setting(value)
        for key, value in zip(input_ids, values, strict=True)
        if key["method"] == name
    }
    if method_settings(name) and not settings:
        raise PreventUpdate
    return workbench.sparse.get(name, **settings)


def layout(catalogue: Catalogue) -> html.Div:
    sources = catalogue.sources()
    methods = [{"label": "none (the pattern alone)", "value": NONE}]
    methods += choices(workbench.sparse.installable())
    controls = html.Div(
        [
            labelled(
                "source",
                dcc.Dropdown(
                    id=ids.ATTENTION_SOURCE,
                    options=[{"label": label, "value": value} for value, label in sources],
                    value=sources[0][0] if sources else None,
                    placeholder="no run with a checkpoint or a trace",
                    clearable=False,
                ),
                width="420px",
            ),
            labelled("example", dcc.Dropdown(id=ids.ATTENTION_EXAMPLE, clearable=False), "100px"),
            labelled("layer", dcc.Dropdown(id=ids.ATTENTION_LAYER, clearable=False), "100px"),
            labelled("head", dcc.Dropdown(id=ids.ATTENTION_HEAD, clearable=False), "100px"),
        ],
        style=ROW,
    )
    method = html.Div(
        [
            labelled(
                "sparse method",
                dcc.Dropdown(
                    id=ids.ATTENTION_METHOD,
                    options=methods,
                    value=DEFAULT_METHOD,
                    clearable=False,
                ),
                width="240px",
            ),
            html.Div(
                hparam_inputs(DEFAULT_METHOD), id=ids.ATTENTION_HPARAMS, style=ROW | {"gap": "6px"}
            ),
            labelled(
                "block size",
                dcc.Dropdown(
                    id=ids.ATTENTION_BLOCK,
                    options=choices(BLOCK_SIZES),
                    value=BLOCK_SIZES[0],
                    clearable=False,
                ),
                "100px",
            ),
        ],
        style=ROW | {"marginTop": "8px"},
    )
    statistics = html.Div(
        [
            html.Span("density "),
            html.B(NO_STATISTIC, id=ids.ATTENTION_DENSITY),
            html.Span("  ·  recall "),
            html.B(NO_STATISTIC, id=ids.ATTENTION_RECALL),
            html.Span("  ·  output error "),
            html.B(NO_STATISTIC, id=ids.ATTENTION_ERROR),
        ],
        style={"margin": "10px 0", "fontSize": "15px"},
    )
    figures = html.Div(
        [
            html.Div(
                [
                    html.P("Click a head to open its pattern.", style={"margin": "0"}),
                    dcc.Loading(
                        graph(empty_figure("choose a source"), "grid", id=ids.ATTENTION_GRID)
                    ),
                ]
            ),
            dcc.Loading(
                graph(empty_figure("choose a source"), "pattern", id=ids.ATTENTION_PATTERN)
            ),
        ],
        style={
            "display": "grid",
            "gridTemplateColumns": "minmax(320px, 2fr) minmax(480px, 3fr)",
            "gap": "12px",
        },
    )
    return html.Div(
        [
            controls,
            html.Div(id=ids.ATTENTION_NOTE, style={"color": "#555", "margin": "6px 0"}),
            method,
            statistics,
            html.Div(id=ids.ATTENTION_MESSAGE),
            figures,
            dcc.Store(id=ids.ATTENTION_VIEW),
        ]
    )


SOURCE_OUTPUTS = 9
"""note, example options and value, layer options and value, head options and value, grid,
message."""


def select_source(
    catalogue: Catalogue,
    source: str | None,
    click: Mapping[str, Any] | None,
    triggered: str | None,
) -> tuple[Any, ...]:
    """The controls and the grid of a source, or (a click on the grid) the clicked head:
    ``(note, example options, example, layer options, layer, head options, head, grid figure,
    message)``, unchanged entries as ``dash.no_update``."""
    from dash import no_update

    if triggered == ids.ATTENTION_GRID:
        points = (click or {}).get("points") or []
        try:
            layer, head = grid_cell(points[0]["x"], points[0]["y"])
        except (IndexError, KeyError, ValueError) as error:
            return (no_update,) * 8 + (failure(error, "the clicked cell"),)
        return (no_update,) * 4 + (layer, no_update, head, no_update, no_update)
    if source is None:
        text = f"No run under {catalogue.root} has a checkpoint or a trace."
        return ("", [], None, [], None, [], None, empty_figure(text), message(text, "note"))
    try:
        subject = catalogue.subject(source)
        grid = grid_figure(subject)
    except READ_FAILURES as error:
        blank = empty_figure("this source cannot be shown")
        return ("", [], None, [], None, [], None, blank, failure(error, source))
    layers = sorted(subject.trace.patterns)
    if not layers:
        text = f"{subject.name} recorded no patterns (statistics only)"
        return (subject.note, [], None, [], None, [], None, grid, message(text, "note"))
    return (
        subject.note,
        choices(range(subject.examples)),
        0,
        choices(layers),
        layers[-1],
        choices(subject.trace.heads),
        subject.trace.heads[0],
        grid,
        None,
    )


def window_of(
    relayout: Mapping[str, Any] | None,
    subject: AttentionSubject,
    layer: int,
    current: Window | None,
) -> Window | None:
    """The positions a zoom (``relayoutData``) shows: None for the whole pattern (a double
    click), ``current`` for a relayout that sets no axis range (a resize)."""
    relayout = relayout or {}
    if relayout.get("xaxis.autorange") or relayout.get("yaxis.autorange"):
        return None

    def bounds(axis: str) -> list[float] | None:
        if f"{axis}.range[0]" in relayout:
            return [relayout[f"{axis}.range[0]"], relayout[f"{axis}.range[1]"]]
        return relayout.get(f"{axis}.range")

    x, y = bounds("xaxis"), bounds("yaxis")
    if x is None and y is None:
        return current
    pattern = subject.trace.patterns[layer]  # [batch, heads, kept_q, kv_len]
    q_len, kv_len = max(subject.trace.pattern_queries) + 1, pattern.shape[-1]
    if current is None:
        current = Window(0, q_len, 0, kv_len)
    return Window.from_ranges(
        x if x is not None else [current.k0 - 0.5, current.k1 - 0.5],
        y if y is not None else [current.q0 - 0.5, current.q1 - 0.5],
        q_len,
        kv_len,
    )


def show_pattern(
    catalogue: Catalogue,
    source: str | None,
    example: int | None,
    layer: int | None,
    head: int | None,
    method_name: str | None,
    input_ids: Sequence[Mapping[str, str]],
    values: Sequence[Any],
    block_size: int,
    relayout: Mapping[str, Any] | None,
    view: Mapping[str, Any] | None,
    triggered: str | None,
) -> tuple[Any, ...]:
    """``(pattern figure, density, recall, output error, message, view)`` of the chosen head
    (``view``: the zoomed window and the head it belongs to, kept across method changes)."""
    if source is None or layer is None or head is None or example is None:
        raise PreventUpdate
    shown = [source, example, layer, head]
    blank = (NO_STATISTIC,) * 3
    try:
        subject = catalogue.subject(source)
        same = view and view.get("shown") == shown and view.get("window")
        window = Window(**view["window"]) if same else None
        if triggered == ids.ATTENTION_PATTERN:
            window = window_of(relayout, subject, layer, window)
        method = chosen_method(method_name, input_ids, values)
        if method is not None and not subject.live:
            text = f"{subject.name} is a saved trace: choose a run's model to run a method"
            figure, _ = pattern_panel(
                subject, layer=layer, head=head, example=example, window=window
            )
            return (figure, *blank, message(text, "note"), _view(shown, window))
        figure, selection = pattern_panel(
            subject,
            layer=layer,
            head=head,
            example=example,
            method=method,
            block_size=block_size,
            window=window,
        )
    except READ_FAILURES as error:
        return (empty_figure("no pattern"), *blank, failure(error, "pattern"), None)
    if selection is None:
        return (figure, *blank, None, _view(shown, window))
    numbers = (
        f"{selection.density:.3f}",
        f"{selection.recall:.3f}",
        f"{selection.output_error:.3g}",
    )
    return (figure, *numbers, None, _view(shown, window))


def _view(shown: list[Any], window: Window | None) -> dict[str, Any]:
    return {"shown": shown, "window": None if window is None else asdict(window)}


def register(app: Dash, catalogue: Catalogue) -> None:
    @app.callback(
        Output(ids.ATTENTION_NOTE, "children"),
        Output(ids.ATTENTION_EXAMPLE, "options"),
        Output(ids.ATTENTION_EXAMPLE, "value"),
        Output(ids.ATTENTION_LAYER, "options"),
        Output(ids.ATTENTION_LAYER, "value"),
        Output(ids.ATTENTION_HEAD, "options"),
        Output(ids.ATTENTION_HEAD, "value"),
        Output(ids.ATTENTION_GRID, "figure"),
        Output(ids.ATTENTION_MESSAGE, "children", allow_duplicate=True),
        Input(ids.ATTENTION_SOURCE, "value"),
        Input(ids.ATTENTION_GRID, "clickData"),
        prevent_initial_call="initial_duplicate",
    )
    def _source(source: str | None, click: Mapping[str, Any] | None) -> tuple[Any, ...]:
        return select_source(catalogue, source, click, ctx.triggered_id)

    @app.callback(Output(ids.ATTENTION_HPARAMS, "children"), Input(ids.ATTENTION_METHOD, "value"))
    def _hparams(name: str | None) -> list[Any]:
        return hparam_inputs(name)

    @app.callback(
        Output(ids.ATTENTION_PATTERN, "figure"),
        Output(ids.ATTENTION_DENSITY, "children"),
        Output(ids.ATTENTION_RECALL, "children"),
        Output(ids.ATTENTION_ERROR, "children"),
        Output(ids.ATTENTION_MESSAGE, "children"),
        Output(ids.ATTENTION_VIEW, "data"),
        Input(ids.ATTENTION_SOURCE, "value"),
        Input(ids.ATTENTION_EXAMPLE, "value"),
        Input(ids.ATTENTION_LAYER, "value"),
        Input(ids.ATTENTION_HEAD, "value"),
        Input(ids.ATTENTION_METHOD, "value"),
        Input({"type": ids.HPARAM, "method": ALL, "name": ALL}, "value"),
        Input(ids.ATTENTION_BLOCK, "value"),
        Input(ids.ATTENTION_PATTERN, "relayoutData"),
        State({"type": ids.HPARAM, "method": ALL, "name": ALL}, "id"),
        State(ids.ATTENTION_VIEW, "data"),
    )
    def _pattern(
        source: str | None,
        example: int | None,
        layer: int | None,
        head: int | None,
        method: str | None,
        values: list[Any],
        block_size: int,
        relayout: Mapping[str, Any] | None,
        input_ids: list[Mapping[str, str]],
        view: Mapping[str, Any] | None,
    ) -> tuple[Any, ...]:
        return show_pattern(
            catalogue,
            source,
            example,
            layer,
            head,
            method,
            input_ids,
            values,
            block_size,
            relayout,
            view,
            ctx.triggered_id,
        )

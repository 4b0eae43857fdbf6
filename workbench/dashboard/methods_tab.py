"""The Methods tab: several sparse methods installed in one run's model, side by side: density
against recall, local and end-to-end output error, KL and accuracy change
(`workbench.metrics.fidelity`), and the layouts each selects on one head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import Dash, Input, Output, dcc, html

import workbench.sparse
from workbench.dashboard import ids
from workbench.dashboard.data import MODEL, Catalogue
from workbench.dashboard.panels import methods_panel
from workbench.dashboard.widgets import (
    READ_FAILURES,
    ROW,
    choices,
    empty_figure,
    failure,
    graph,
    labelled,
    message,
    table,
)

DEFAULT_METHODS = ("top_k", "top_p", "sink_window", "banded", "block_top_k")
"""Methods compared when the page opens (settings for short inputs)."""
BLOCK_SIZES = (16, 32, 64)
ALL_LAYERS = "all"
COLUMNS = tuple(
    (name, name)
    for name in (
        "method",
        "density",
        "recall",
        "local error",
        "output error",
        "KL",
        "accuracy delta",
    )
)


def model_sources(catalogue: Catalogue) -> list[tuple[str, str]]:
    """The sources with a model (methods run on a model, not on a saved trace)."""
    return [(value, label) for value, label in catalogue.sources() if value.startswith(MODEL)]


def layout(catalogue: Catalogue) -> html.Div:
    sources = model_sources(catalogue)
    installable = workbench.sparse.installable()
    return html.Div(
        [
            html.Div(
                [
                    labelled(
                        "model",
                        dcc.Dropdown(
                            id=ids.METHODS_SOURCE,
                            options=[{"label": label, "value": value} for value, label in sources],
                            value=sources[0][0] if sources else None,
                            placeholder="no run with a checkpoint",
                            clearable=False,
                        ),
                        width="420px",
                    ),
                    labelled(
                        "methods (settings for short inputs)",
                        dcc.Dropdown(
                            id=ids.METHODS_CHOICE,
                            options=choices(installable),
                            value=[name for name in DEFAULT_METHODS if name in installable],
                            multi=True,
                        ),
                        width="520px",
                    ),
                    labelled(
                        "layers", dcc.Dropdown(id=ids.METHODS_LAYER, clearable=False), "110px"
                    ),
                    labelled(
                        "block size",
                        dcc.Dropdown(
                            id=ids.METHODS_BLOCK,
                            options=choices(BLOCK_SIZES),
                            value=BLOCK_SIZES[0],
                            clearable=False,
                        ),
                        "100px",
                    ),
                ],
                style=ROW,
            ),
            html.Div(id=ids.METHODS_MESSAGE),
            dcc.Loading(
                [
                    graph(empty_figure("choose a model"), "fidelity", id=ids.METHODS_FIDELITY),
                    html.Div(id=ids.METHODS_TABLE),
                    graph(empty_figure("choose a model"), "layouts", id=ids.METHODS_LAYOUTS),
                ]
            ),
        ]
    )


def layer_choices(catalogue: Catalogue, source: str | None) -> tuple[list[Any], Any, Any]:
    """``(layer options, value, message)`` of a model source: every layer, or one."""
    if source is None:
        text = f"No run under {catalogue.root} has a checkpoint to install methods into."
        return [], None, message(text, "note")
    try:
        layers = catalogue.subject(source).trace.layers
    except READ_FAILURES as error:
        return [], None, failure(error, source)
    options = [{"label": "all", "value": ALL_LAYERS}, *choices(layers)]
    return options, ALL_LAYERS, None


def compare(
    catalogue: Catalogue,
    source: str | None,
    names: Sequence[str] | None,
    layer: str | int | None,
    block_size: int,
) -> tuple[Any, Any, Any, Any]:
    """``(fidelity figure, layouts figure, table, message)`` of the chosen methods."""
    blank = empty_figure("nothing to compare")
    if source is None or layer is None:
        return blank, blank, None, None
    if not names:
        return blank, blank, None, message("Choose one or more methods.", "note")
    try:
        subject = catalogue.subject(source)
        methods = [workbench.sparse.short_input(name) for name in names]
        layers = None if layer == ALL_LAYERS else [int(layer)]
        fidelity, layouts, rows = methods_panel(
            subject, methods, layers=layers, block_size=block_size
        )
    except READ_FAILURES as error:
        return blank, blank, None, failure(error, "methods")
    return fidelity, layouts, table(rows, COLUMNS), message(subject.note, "note")


def register(app: Dash, catalogue: Catalogue) -> None:
    @app.callback(
        Output(ids.METHODS_LAYER, "options"),
        Output(ids.METHODS_LAYER, "value"),
        Output(ids.METHODS_MESSAGE, "children", allow_duplicate=True),
        Input(ids.METHODS_SOURCE, "value"),
        prevent_initial_call="initial_duplicate",
    )
    def _layers(source: str | None) -> tuple[list[Any], Any, Any]:
        return layer_choices(catalogue, source)

    @app.callback(
        Output(ids.METHODS_FIDELITY, "figure"),
        Output(ids.METHODS_LAYOUTS, "figure"),
        Output(ids.METHODS_TABLE, "children"),
        Output(ids.METHODS_MESSAGE, "children"),
        Input(ids.METHODS_SOURCE, "value"),
        Input(ids.METHODS_CHOICE, "value"),
        Input(ids.METHODS_LAYER, "value"),
        Input(ids.METHODS_BLOCK, "value"),
    )
    def _compare(
        source: str | None, names: list[str] | None, layer: Any, block_size: int
    ) -> tuple[Any, ...]:
        return compare(catalogue, source, names, layer, block_size)

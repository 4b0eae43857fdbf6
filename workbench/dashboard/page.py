"""The page: a header (the store's root, a button that reads it again) over the four tabs."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from workbench.dashboard import attention_tab, ids, methods_tab, runs_tab, sae_tab
from workbench.dashboard.data import Catalogue

TABS = (
    ("runs", "Runs", runs_tab),
    ("attention", "Attention", attention_tab),
    ("methods", "Methods", methods_tab),
    ("sae", "SAE features", sae_tab),
)
"""``(value, label, module)`` of each tab; a module has ``layout(catalogue)`` and
``register(app, catalogue)``."""


def root_note(catalogue: Catalogue) -> str:
    return f"{catalogue.root}: {len(catalogue.runs)} runs, {len(catalogue.analyses)} analyses"


def layout(catalogue: Catalogue) -> html.Div:
    """The whole page, from what the catalogue holds now."""
    header = html.Div(
        [
            html.H2("Sparse-attention workbench", style={"margin": "0 16px 0 0"}),
            html.Span(root_note(catalogue), id=ids.ROOT_NOTE, style={"color": "#555"}),
            html.Button("read the runs again", id=ids.REFRESH, style={"marginLeft": "auto"}),
        ],
        style={"display": "flex", "alignItems": "center", "gap": "12px", "padding": "8px 0"},
    )
    tabs = dcc.Tabs(
        id=ids.TABS,
        value=TABS[0][0],
        children=[
            dcc.Tab(
                label=label,
                value=value,
                children=html.Div(module.layout(catalogue), style={"padding": "10px 4px"}),
            )
            for value, label, module in TABS
        ],
    )
    return html.Div([header, tabs], style={"fontFamily": "sans-serif", "margin": "0 16px"})


def register(app: Dash, catalogue: Catalogue) -> None:
    """Every tab's callbacks, and the refresh button's."""
    for _, _, module in TABS:
        module.register(app, catalogue)

    @app.callback(
        Output(ids.ROOT_NOTE, "children"),
        Output(ids.RUNS_INDEX, "data"),
        Output(ids.RUNS_CHOICE, "options"),
        Output(ids.RUNS_FIT_CHOICE, "options"),
        Output(ids.ATTENTION_SOURCE, "options"),
        Output(ids.METHODS_SOURCE, "options"),
        Output(ids.SAE_CHOICE, "options"),
        Input(ids.REFRESH, "n_clicks"),
        prevent_initial_call=True,
    )
    def _refresh(_: int | None) -> tuple[Any, ...]:
        return refresh(catalogue)


def refresh(catalogue: Catalogue) -> tuple[Any, ...]:
    """Read the store again: the new root note, index rows, options of every chooser."""
    catalogue.refresh()
    rows = catalogue.index()

    def options(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"label": label, "value": value} for value, label in pairs]

    return (
        root_note(catalogue),
        rows,
        runs_tab.run_options(rows),
        options(catalogue.fits()),
        options(catalogue.sources()),
        options(methods_tab.model_sources(catalogue)),
        options(catalogue.saes()),
    )

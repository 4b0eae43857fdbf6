"""The Runs tab: the run index (filtered by text and status), the runs chosen for comparison with
their training curves side by side, and the power-law fit of an experiment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import Dash, Input, Output, dcc, html

from workbench.dashboard import ids
from workbench.dashboard.data import UNREADABLE, Catalogue
from workbench.dashboard.panels import curves_figures, fit_figures
from workbench.dashboard.widgets import (
    READ_FAILURES,
    ROW,
    failure,
    graph,
    labelled,
    message,
    table,
)

COLUMNS = (
    ("experiment", "experiment"),
    ("run", "run"),
    ("status", "status"),
    ("task", "task"),
    ("method", "method"),
    ("seed", "seed"),
    ("last_step", "last step"),
    ("eval_loss", "eval loss"),
    ("eval_accuracy", "eval accuracy"),
    ("eval_mse", "eval MSE"),
    ("checkpoint", "checkpoint"),
    ("traces", "traces"),
    ("saes", "SAEs"),
    ("error", "error"),
)
"""``(key, header)`` of the index's columns."""
STATUSES = ("finished", "unfinished", "empty", UNREADABLE)
STATUS_STYLES = {
    "finished": {"background": "#E8F5E9"},
    "unfinished": {"background": "#FFF8E1"},
    "empty": {"background": "#F3F3F3"},
    UNREADABLE: {"background": "#FDECEA", "color": "#7A1212"},
}
SELECTED = 4
"""Runs compared when the page opens (the first finished ones)."""
ERROR_CHARACTERS = 80
"""An unreadable run's error is cut to this many characters in its cell (whole in the tooltip)."""


def default_selection(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The first `SELECTED` runs that logged metrics (finished first)."""
    ranked = sorted(rows, key=lambda row: (row.get("status") != "finished", row["id"]))
    return [row["id"] for row in ranked if row.get("last_step") is not None][:SELECTED]


def run_options(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Options of the comparison chooser: every run, labelled with its method and status."""
    return [
        {"label": f"{row['id']} ({row.get('method', '?')}, {row['status']})", "value": row["id"]}
        for row in rows
    ]


def matches(row: Mapping[str, Any], text: str | None, statuses: Sequence[str] | None) -> bool:
    """Whether ``row`` has one of ``statuses`` (None: any) and holds ``text`` (case-insensitive)
    in some column."""
    if statuses is not None and row.get("status") not in statuses:
        return False
    needle = (text or "").strip().lower()
    return not needle or any(needle in str(value).lower() for value in row.values())


def index_table(
    rows: Sequence[Mapping[str, Any]], text: str | None, statuses: Sequence[str] | None
) -> list[Any]:
    """The index rows that match the filter as a table (status colours; an error cut to its
    first line, whole in the row's tooltip), with a count."""
    shown = [row for row in rows if matches(row, text, statuses)]
    cells = []
    for row in shown:
        error = row.get("error")
        if error and (len(error) > ERROR_CHARACTERS or "\n" in error):
            error = error.splitlines()[0][:ERROR_CHARACTERS] + " ..."
        cells.append({**row, "error": error})
    return [
        html.Div(f"{len(shown)} of {len(rows)} runs", style={"color": "#555"}),
        table(
            cells,
            COLUMNS,
            row_styles=[STATUS_STYLES.get(row.get("status"), {}) for row in shown],
            titles=[row.get("error") for row in shown],
        ),
    ]


def layout(catalogue: Catalogue) -> html.Div:
    rows = catalogue.index()
    fits = catalogue.fits()
    return html.Div(
        [
            html.P(
                "Runs of the store: finished, unfinished, empty (a config without metrics yet) "
                "or unreadable (files that cannot be read: the error says why)."
            ),
            html.Div(
                [
                    labelled(
                        "filter (any column)",
                        dcc.Input(id=ids.RUNS_FILTER, type="text", debounce=True),
                        width="240px",
                    ),
                    labelled(
                        "status",
                        dcc.Checklist(
                            id=ids.RUNS_STATUS,
                            options=list(STATUSES),
                            value=list(STATUSES),
                            inline=True,
                        ),
                        width="420px",
                    ),
                ],
                style=ROW,
            ),
            dcc.Store(id=ids.RUNS_INDEX, data=rows),
            html.Div(index_table(rows, None, None), id=ids.RUNS_TABLE),
            labelled(
                "runs compared",
                dcc.Dropdown(
                    id=ids.RUNS_CHOICE,
                    options=run_options(rows),
                    value=default_selection(rows),
                    multi=True,
                ),
                width="100%",
            ),
            html.Div(id=ids.RUNS_PROBLEMS),
            dcc.Loading(
                html.Div(id=ids.RUNS_CURVES, style={"display": "flex", "flexWrap": "wrap"})
            ),
            html.H3("Power-law fit of an experiment"),
            labelled(
                "analysis",
                dcc.Dropdown(
                    id=ids.RUNS_FIT_CHOICE,
                    options=[{"label": label, "value": key} for key, label in fits],
                    value=fits[0][0] if fits else None,
                    placeholder="no analysis with a fit",
                ),
                width="640px",
            ),
            dcc.Loading(html.Div(id=ids.RUNS_FIT)),
        ]
    )


def curves(catalogue: Catalogue, selected: Sequence[str] | None) -> tuple[list[Any], list[Any]]:
    """The curves of the chosen runs (``selected``: their ids), and the messages about runs
    that could not be drawn."""
    if not selected:
        return [message("Choose runs to compare to draw their curves.", "note")], []
    runs, notes = {}, []
    for key in selected:
        try:
            runs[key] = catalogue.run(key)
        except KeyError as error:
            notes.append(failure(error, key))
    figures, problems = curves_figures(runs)
    notes += [message(problem, "note") for problem in problems]
    graphs = [
        html.Div(graph(figure, f"curves-{name}"), style={"flex": "1 1 560px", "minWidth": "480px"})
        for name, figure in figures.items()
    ]
    return graphs, notes


def fit(catalogue: Catalogue, key: str | None) -> Any:
    """The fit figure of the analysis ``key`` and, where it fitted from longer lengths too, its
    exponents against the shortest length (a message when there is none or it is broken)."""
    if key is None:
        return message(
            "No analysis with a power-law fit under this root (`workbench run emergence` writes "
            "one).",
            "note",
        )
    try:
        figures = fit_figures(catalogue.analysis(key))
        names = ("fit", "exponents")  # the fit, then its exponents by length where drawn
        return html.Div([graph(figure, name) for figure, name in zip(figures, names, strict=False)])
    except READ_FAILURES as error:
        return failure(error, f"fit of {key}")


def register(app: Dash, catalogue: Catalogue) -> None:
    @app.callback(
        Output(ids.RUNS_TABLE, "children"),
        Input(ids.RUNS_INDEX, "data"),
        Input(ids.RUNS_FILTER, "value"),
        Input(ids.RUNS_STATUS, "value"),
    )
    def _table(rows: list[dict[str, Any]], text: str | None, statuses: list[str]) -> list[Any]:
        return index_table(rows or [], text, statuses)

    @app.callback(
        Output(ids.RUNS_CURVES, "children"),
        Output(ids.RUNS_PROBLEMS, "children"),
        Input(ids.RUNS_CHOICE, "value"),
    )
    def _curves(selected: list[str] | None) -> tuple[list[Any], list[Any]]:
        return curves(catalogue, selected)

    @app.callback(Output(ids.RUNS_FIT, "children"), Input(ids.RUNS_FIT_CHOICE, "value"))
    def _fit(key: str | None) -> Any:
        return fit(catalogue, key)

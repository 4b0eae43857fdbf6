"""The SAE tab: the attention-output SAEs of the runs (`workbench.sae`): evaluation metrics and
training curve (from the SAE's record, at once), then, from a feature report on held-out examples
(loaded with sae-lens, seconds the first time), the features' density, their attribution per
head, the task variables they match and the top-activating examples of a chosen feature."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html

from workbench.dashboard import ids
from workbench.dashboard.data import Catalogue
from workbench.dashboard.panels import (
    STRONGEST_FEATURES,
    sae_examples_figure,
    sae_feature_figures,
    sae_summary_table,
    sae_training_figure,
)
from workbench.dashboard.widgets import (
    READ_FAILURES,
    ROW,
    choices,
    failure,
    graph,
    labelled,
    message,
)

HALF = {"flex": "1 1 520px", "minWidth": "460px"}


def layout(catalogue: Catalogue) -> html.Div:
    saes = catalogue.saes()
    return html.Div(
        [
            html.Div(
                [
                    labelled(
                        "SAE",
                        dcc.Dropdown(
                            id=ids.SAE_CHOICE,
                            options=[{"label": label, "value": value} for value, label in saes],
                            value=saes[0][0] if saes else None,
                            placeholder="no SAE in these runs",
                            clearable=False,
                        ),
                        width="520px",
                    ),
                    labelled("feature", dcc.Dropdown(id=ids.SAE_FEATURE, clearable=False), "160px"),
                ],
                style=ROW,
            ),
            html.Div(id=ids.SAE_MESSAGE),
            dcc.Loading(
                html.Div(id=ids.SAE_SUMMARY, style={"display": "flex", "flexWrap": "wrap"})
            ),
            dcc.Loading(
                html.Div(id=ids.SAE_FIGURES, style={"display": "flex", "flexWrap": "wrap"})
            ),
            dcc.Loading(html.Div(id=ids.SAE_EXAMPLES)),
        ]
    )


def summary(catalogue: Catalogue, value: str | None) -> tuple[list[Any], Any]:
    """The SAE's metrics table and training curve (its ``workbench.json``), and a message."""
    if value is None:
        text = (
            f"No SAE in the runs under {catalogue.root}: `workbench sae train RUN --layer L` "
            "trains one into the run's saes/ folder."
        )
        return [], message(text, "note")
    try:
        metadata = catalogue.sae_metadata(value)
        panels = [graph(sae_summary_table(value, metadata), "sae-metrics")]
        training = sae_training_figure(value, metadata)
    except READ_FAILURES as error:
        return [], failure(error, value)
    if training is not None:
        panels.append(graph(training, "sae-training"))
    return [html.Div(panel, style=HALF) for panel in panels], None


def features(catalogue: Catalogue, value: str | None) -> tuple[list[Any], list[Any], Any]:
    """``(figures, feature options, feature)`` of the SAE's feature report (a message in place
    of the figures when it cannot be made)."""
    if value is None:
        return [], [], None
    try:
        view = catalogue.sae(value)
        figures = sae_feature_figures(view)
    except (*READ_FAILURES, ImportError) as error:
        return [failure(error, f"features of {value}")], [], None
    strongest = view.report.strongest_features(STRONGEST_FEATURES).tolist()
    shown = [html.Div(graph(figure, f"sae-{name}"), style=HALF) for name, figure in figures.items()]
    if not strongest:
        shown.insert(0, message("No feature fires on the held-out examples.", "note"))
    return shown, choices(strongest), strongest[0] if strongest else None


def examples(catalogue: Catalogue, value: str | None, feature: int | None) -> Any:
    """The top-activating examples of ``feature``."""
    if value is None or feature is None:
        return None
    try:
        view = catalogue.sae(value)
        figure = sae_examples_figure(view, feature)
    except (*READ_FAILURES, ImportError) as error:
        return failure(error, f"feature {feature}")
    return graph(figure, "sae-top-examples")


def register(app: Dash, catalogue: Catalogue) -> None:
    @app.callback(
        Output(ids.SAE_SUMMARY, "children"),
        Output(ids.SAE_MESSAGE, "children"),
        Input(ids.SAE_CHOICE, "value"),
    )
    def _summary(value: str | None) -> tuple[list[Any], Any]:
        return summary(catalogue, value)

    @app.callback(
        Output(ids.SAE_FIGURES, "children"),
        Output(ids.SAE_FEATURE, "options"),
        Output(ids.SAE_FEATURE, "value"),
        Input(ids.SAE_CHOICE, "value"),
    )
    def _features(value: str | None) -> tuple[Any, ...]:
        return features(catalogue, value)

    @app.callback(
        Output(ids.SAE_EXAMPLES, "children"),
        Input(ids.SAE_FEATURE, "value"),
        State(ids.SAE_CHOICE, "value"),
    )
    def _examples(feature: int | None, value: str | None) -> Any:
        return examples(catalogue, value, feature)

"""Figures of attention-output SAEs (`workbench.sae`): pure functions from tensors and records to
``go.Figure``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.viz.style import method_colour

RELEVANT_COLOUR = "#d62728"
QUERY_COLOUR = "#111111"


def feature_density_figure(frequency: torch.Tensor, *, title: str = "feature density") -> go.Figure:
    """Histogram of ``log10`` of each alive feature's firing frequency ``[d_sae]`` (the fraction
    of rows it fires on), the dead features counted in the title."""
    frequency = frequency.detach().double().cpu()
    alive = frequency[frequency > 0]
    dead = int((frequency == 0).sum())
    figure = go.Figure(
        go.Histogram(
            x=alive.log10().numpy(),
            nbinsx=40,
            marker_color="#1f77b4",
            hovertemplate="log10 frequency %{x}<br>%{y} features<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{title}: {len(alive)} alive, {dead} dead of {len(frequency)}",
        xaxis_title="log10 firing frequency",
        yaxis_title="features",
        bargap=0.05,
        width=640,
        height=400,
    )
    return figure


def head_attribution_figure(
    head_attribution: torch.Tensor,
    features: Sequence[int],
    *,
    head_norms: torch.Tensor | None = None,
    title: str = "direct feature attribution per head",
) -> go.Figure:
    """Heatmap of the mean direct attribution ``[d_sae, n_heads]`` of ``features`` per head
    (diverging around 0); with ``head_norms`` ``[d_sae, n_heads]`` a second panel of the decoder
    norm per head (which heads the feature writes)."""
    features = list(features)
    panels = [("mean direct attribution", head_attribution, "RdBu", True)]
    if head_norms is not None:
        panels.append(("decoder norm", head_norms, "Blues", False))
    figure = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[name for name, *_ in panels],
        shared_yaxes=True, horizontal_spacing=0.14,
    )  # fmt: skip
    labels = [f"feature {feature}" for feature in features]
    for column, (name, values, colours, centred) in enumerate(panels, start=1):
        data = values[features].detach().float().cpu().numpy()
        bound = float(np.abs(data).max()) if data.size else 1.0
        figure.add_trace(
            go.Heatmap(
                z=data,
                x=[f"head {head}" for head in range(data.shape[1])],
                y=labels,
                colorscale=colours,
                zmid=0 if centred else None,
                zmin=-bound if centred else 0,
                zmax=bound,
                colorbar={"x": _panel_end(figure, column) + 0.01, "len": 0.9},
                hovertemplate=f"%{{y}}, %{{x}}<br>{name} %{{z:.3g}}<extra></extra>",
            ),
            row=1,
            col=column,
        )
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(
        title=title, width=420 * len(panels), height=max(300, 40 + 28 * len(features))
    )
    return figure


def _panel_end(figure: go.Figure, column: int) -> float:
    """Right edge (paper coordinates) of subplot ``column`` of a one-row figure."""
    axis = figure.layout["xaxis" if column == 1 else f"xaxis{column}"]
    return float(axis.domain[1])


def top_examples_figure(
    examples: Sequence[Mapping[str, Any]], feature: int, *, title: str | None = None
) -> go.Figure:
    """One row per example of `workbench.sae.top_examples`: its tokens, coloured by the source
    attribution of each position to ``feature`` at the row's position (framed in black), the
    ground-truth relevant positions of that row framed in dotted red."""
    if not examples:
        figure = go.Figure()
        figure.update_layout(title=title or f"feature {feature}: never active")
        return figure
    width = max(len(example["tokens"]) for example in examples)
    values = np.full((len(examples), width), np.nan)
    text = [[""] * width for _ in examples]
    for row, example in enumerate(examples):
        attribution = example["attribution"][: len(example["tokens"])]
        values[row, : len(attribution)] = attribution
        text[row][: len(example["tokens"])] = example["tokens"]
    bound = float(np.nanmax(np.abs(values))) or 1.0
    labels = [
        f"ex {example['example']} @{example['position']}: {example['activation']:.3g}"
        for example in examples
    ]
    figure = go.Figure(
        go.Heatmap(
            z=values,
            text=text,
            texttemplate="%{text}",
            y=labels,
            colorscale="RdBu",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar={"title": {"text": "attribution"}},
            hovertemplate="%{y}<br>position %{x}: %{text}<br>attribution %{z:.3g}<extra></extra>",
        )
    )
    for row, example in enumerate(examples):
        _frame(figure, example["position"], row, 0.5, {"color": QUERY_COLOUR, "width": 2})
        for position in example["relevant"]:
            _frame(
                figure, position, row, 0.42, {"color": RELEVANT_COLOUR, "width": 2, "dash": "dot"}
            )
    figure.update_layout(
        title=title
        or f"feature {feature}: top-activating rows (black: the row, dotted red: relevant)",
        xaxis_title="source position",
        yaxis_autorange="reversed",
        width=min(1400, 220 + 46 * width),
        height=120 + 34 * len(examples),
    )
    return figure


def _frame(figure: go.Figure, x: int, row: int, half: float, line: dict[str, Any]) -> None:
    """A rectangle of half-size ``half`` around heatmap cell (``x``, ``row``)."""
    figure.add_shape(type="rect", x0=x - half, x1=x + half, y0=row - half, y1=row + half, line=line)


def variable_match_figure(match: Any, *, max_values: int = 40) -> go.Figure:
    """Heatmap of F1 between the values of one latent variable (`VariableMatch`) and their
    best-matching features (at most ``max_values`` values): a bright diagonal means one dedicated
    feature per value."""
    values = match.values[:max_values]
    features = list(dict.fromkeys(match.best_feature[:max_values].tolist()))
    f1 = match.f1[features][:, : len(values)].T.float().cpu().numpy()  # [values, features]
    figure = go.Figure(
        go.Heatmap(
            z=f1,
            x=[f"f{feature}" for feature in features],
            y=[str(value) for value in values.tolist()],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "F1"}},
            hovertemplate="value %{y}, feature %{x}<br>F1 %{z:.2f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{match.name}: {match.dedicated} of {len(match.values)} values have a dedicated "
        "feature",
        xaxis_title="best-matching feature",
        yaxis_title=f"{match.name} value",
        yaxis_autorange="reversed",
        width=max(420, 160 + 22 * len(features)),
        height=max(360, 120 + 18 * len(values)),
    )
    return figure


def sae_loss_figure(curves: Mapping[str, Sequence[Sequence[float]]]) -> go.Figure:
    """Training curves ``name -> [[step, loss, mse_loss], ...]`` (`workbench.sae` metadata):
    total loss solid, reconstruction MSE dotted, log scale."""
    figure = go.Figure()
    for name, curve in curves.items():
        steps, loss, mse = (list(column) for column in zip(*curve, strict=True))
        figure.add_trace(go.Scatter(x=steps, y=loss, name=f"{name} loss", mode="lines"))
        figure.add_trace(
            go.Scatter(x=steps, y=mse, name=f"{name} mse", mode="lines", line={"dash": "dot"})
        )
    figure.update_layout(
        title="SAE training",
        xaxis_title="step",
        yaxis_title="loss",
        yaxis_type="log",
        width=700,
        height=420,
    )
    return figure


def sae_comparison_figure(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = ("fvu", "l0", "loss_recovered", "relevant_share"),
) -> go.Figure:
    """One bar panel per metric, one bar per SAE (``rows``: ``{"name": ..., <metric>: ...}``;
    missing or NaN values are left out), e.g. SAEs of dense and sparse models of one task; a name
    that is a method label (``"dense"``, ``"top_k(k=4)"``) gets the method's colour."""
    columns = min(len(metrics), 4)
    figure = make_subplots(
        rows=math.ceil(len(metrics) / columns), cols=columns, subplot_titles=list(metrics)
    )
    for index, metric in enumerate(metrics):
        shown = [row for row in rows if _finite(row.get(metric))]
        figure.add_trace(
            go.Bar(
                x=[row["name"] for row in shown],
                y=[row[metric] for row in shown],
                marker_color=[method_colour(row["name"]) for row in shown],
                showlegend=False,
                hovertemplate=f"%{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
            ),
            row=index // columns + 1,
            col=index % columns + 1,
        )
    figure.update_layout(title="SAEs compared", width=300 * columns, height=420)
    return figure


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

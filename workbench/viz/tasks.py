"""Figures of toy-task examples: where the ground-truth relevance lies, and baseline loss curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch

from toy_tasks import Batch, ToyTask
from workbench.viz.style import category_styles


def relevance_figure(task: ToyTask, batch: Batch, index: int = 0) -> go.Figure:
    """Heatmap of example ``index``'s ground-truth relevance: row = prediction position, column =
    input position, 1 where a perfect model must read that input. Unscored rows are left blank."""
    mask = batch.relevance_mask()[index].to(torch.float32).cpu()  # [seq, seq]
    scored = batch.loss_mask[index].cpu()  # [seq]
    mask[~scored] = float("nan")
    hover = _token_hover(task, batch, index)
    figure = go.Figure(
        go.Heatmap(
            z=mask.numpy(),
            x=hover,
            y=hover,
            colorscale=[[0.0, "#f4f4f4"], [1.0, "#c0392b"]],
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="prediction at %{y}<br>input %{x}<br>relevant: %{z}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{task.name}: ground-truth relevance of example {index}",
        xaxis_title="input position",
        yaxis_title="prediction position",
        yaxis_autorange="reversed",
        width=620,
        height=600,
    )
    return figure


def _token_hover(task: ToyTask, batch: Batch, index: int) -> list[str]:
    """Axis labels ``"pos:token"`` for token inputs and ``"pos"`` for continuous ones."""
    if task.kind in ("tokens", "classification"):
        return [f"{pos}:{token}" for pos, token in enumerate(batch.inputs[index].tolist())]
    return [str(pos) for pos in range(batch.seq_len)]


def curves_figure(
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
) -> go.Figure:
    """One line per named curve, x = 0..len-1, each name in its `category_styles` style (fixed
    by the set of names, distinct past plotly's ten colours)."""
    figure = go.Figure()
    styles = category_styles(curves)
    for name, values in curves.items():
        figure.add_trace(
            go.Scatter(
                x=list(range(len(values))), y=list(values), name=name, line=styles[name].line()
            )
        )
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    if log_y:
        figure.update_yaxes(type="log")
    return figure

"""Figures of a `workbench.trace.Trace`."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from workbench.trace import Trace


def trace_figure(trace: Trace, statistic: str = "entropy") -> go.Figure:
    """Heatmap layer x head of ``statistic`` (a name of ``trace.statistic_names()``), averaged over
    batch and queries (padded queries ignored)."""
    layers = sorted(trace.stats)
    # [layers, heads]
    means = torch.stack([trace.statistic(layer, statistic).nanmean(dim=(0, 2)) for layer in layers])
    figure = go.Figure(
        go.Heatmap(
            z=means.cpu().numpy(),
            x=[f"head {head}" for head in trace.heads],
            y=[f"layer {layer}" for layer in layers],
            colorbar={"title": statistic},
        )
    )
    figure.update_layout(
        title=f"mean {statistic} per head ({trace.metadata.get('model', '')})",
        xaxis_title="head",
        yaxis_title="layer",
        yaxis_autorange="reversed",
    )
    return figure


def pattern_figure(trace: Trace, layer: int, head: int, batch: int = 0) -> go.Figure:
    """Heatmap of the recorded pattern of model head ``head`` (query x key) of one example."""
    if layer not in trace.patterns:
        raise KeyError(f"no pattern recorded for layer {layer}: {sorted(trace.patterns)}")
    pattern = trace.patterns[layer][batch, trace.heads.index(head)]  # [kept_q, kv_len]
    figure = go.Figure(
        go.Heatmap(
            z=pattern.cpu().numpy(),
            y=trace.pattern_queries,
            x=list(range(pattern.shape[-1])),
            colorscale="Blues",
            colorbar={"title": "weight"},
        )
    )
    figure.update_layout(
        title=f"attention pattern, layer {layer} head {head}, example {batch}",
        xaxis_title="key position",
        yaxis_title="query position",
        yaxis_autorange="reversed",
    )
    return figure

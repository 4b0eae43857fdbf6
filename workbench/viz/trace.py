"""Figures of a `workbench.trace.Trace`."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

from workbench.trace import Trace
from workbench.viz.attention import Window, attention_figure

TITLES = {
    "entropy": "entropy (nats)",
    "max_weight": "max weight",
    "lse": "logsumexp of the scores",
    "sink_mass": "sink mass (first tokens)",
    "relevant_mass": "relevant mass",
}
"""What a statistic's colour bar says; ``k_<p>``: keys holding mass p."""


def statistic_title(name: str) -> str:
    if name.startswith("k_"):
        return f"{name}: keys holding mass {name[2:]}"
    return TITLES.get(name, name)


def head_label(head: int) -> str:
    return f"head {head}"


def layer_label(layer: int) -> str:
    return f"layer {layer}"


def grid_cell(x: str, y: str) -> tuple[int, int]:
    """``(layer, head)`` of a cell of `trace_figure` from its labels (a click's ``x``, ``y``);
    ``ValueError`` for other labels."""
    head, layer = (
        label.split(" ", 1)[1] if label.startswith(f"{name} ") else ""
        for label, name in ((str(x), "head"), (str(y), "layer"))
    )
    if not (head.isdigit() and layer.isdigit()):
        raise ValueError(f"not a cell of a trace figure: x={x!r}, y={y!r}")
    return int(layer), int(head)


def trace_figure(
    trace: Trace, statistic: str = "entropy", *, statistics: Sequence[str] | None = None
) -> go.Figure:
    """Heatmaps layer x head of per-row statistics, averaged over batch and queries (padded
    queries and rows without relevant positions ignored), one at a time: a menu chooses among
    ``statistics`` (default every statistic of ``trace.statistic_names()``: entropy, max weight,
    logsumexp, sink mass, relevant mass where recorded, the budgets ``k_p``); ``statistic`` is
    shown first (``figure.data[0]``). Cells are labelled `head_label` (x) and `layer_label` (y);
    `grid_cell` reads them back."""
    offered = statistics if statistics is not None else trace.statistic_names()
    names = [statistic, *(name for name in offered if name != statistic)]
    layers = sorted(trace.stats)
    model = trace.metadata.get("model", "")
    figure = go.Figure()
    for index, name in enumerate(names):
        # [layers, heads]
        means = torch.stack([trace.statistic(layer, name).nanmean(dim=(0, 2)) for layer in layers])
        figure.add_trace(
            go.Heatmap(
                z=means.cpu().numpy(),
                x=[head_label(head) for head in trace.heads],
                y=[layer_label(layer) for layer in layers],
                colorbar={"title": {"text": name}},
                name=name,
                visible=index == 0,
                hovertemplate=f"%{{y}}, %{{x}}<br>{name}: %{{z:.3f}}<extra></extra>",
            )
        )

    named = f" ({model})" if model and model != "custom" else ""  # TransformerLens: no name

    def title(name: str) -> str:
        return f"mean {statistic_title(name)} per head{named}"

    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [
                {"visible": [other == name for other in names]},
                {"title": {"text": title(name)}},
            ],
        }
        for name in names
    ]
    figure.update_layout(
        title={"text": title(statistic)},
        xaxis_title="head",
        yaxis_title="layer",
        yaxis_autorange="reversed",
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "showactive": True,
                "x": 0.0,
                "xanchor": "left",
                "y": 1.02,
                "yanchor": "bottom",
            }
        ],
        margin={"t": 120},
    )
    return figure


def pattern_figure(
    trace: Trace,
    layer: int,
    head: int,
    batch: int = 0,
    *,
    tokens: Sequence[str] | None = None,
    relevant: torch.Tensor | None = None,
    kept: torch.Tensor | None = None,
    method: str | None = None,
    window: Window | None = None,
) -> go.Figure:
    """Heatmap of the recorded pattern of model head ``head`` (query x key) of one example
    (`workbench.viz.attention.attention_figure`). The axes are labelled with the example's tokens
    (``tokens``: one string per position, or the trace's ``metadata["tokens"][batch]`` where the
    trace recorded them), positions otherwise. ``relevant`` / ``kept`` ``[kept_q, kv_len]`` bool:
    the ground-truth relevant keys (framed) and a sparse method's selection (tinted in the colour
    of ``method``) of the pattern's rows; ``window``: the positions drawn (long patterns are
    pooled for display)."""
    if layer not in trace.patterns:
        raise KeyError(f"no pattern recorded for layer {layer}: {sorted(trace.patterns)}")
    pattern = trace.patterns[layer][batch, trace.heads.index(head)]  # [kept_q, kv_len]
    if tokens is None and trace.metadata.get("tokens") is not None:
        tokens = trace.metadata["tokens"][batch]
    return attention_figure(
        pattern,
        queries=trace.pattern_queries,
        tokens=tokens,
        relevant=relevant,
        kept=kept,
        method=method,
        window=window,
        title=f"attention pattern, layer {layer} head {head}, example {batch}",
    )

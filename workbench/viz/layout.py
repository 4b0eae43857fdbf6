"""Figures of sparse-attention layouts."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from kernels.layout import Layout


def layout_figure(
    layout: Layout,
    *,
    batch: int = 0,
    head: int = 0,
    scores: torch.Tensor | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of the entries one (batch, head) of ``layout`` keeps (1 = attended).

    Token resolution when ``q_len * kv_len`` is at most 512 x 512, block resolution otherwise.
    ``scores`` (scaled, ``[batch, heads, q_len, kv_len]``) are needed for layouts with a
    ``row_threshold``.
    """
    b, h = min(batch, layout.batch - 1), min(head, layout.heads - 1)
    if layout.q_len * layout.kv_len <= 512 * 512:
        kept = layout.to_dense(scores)[b if scores is None else batch, h]
        axis = "position"
    else:
        kept = layout.block_mask()[b, h]
        axis = "block"
    figure = go.Figure(
        go.Heatmap(
            z=kept.to(torch.uint8).cpu().numpy(),  # 1 byte an entry in the figure's JSON
            colorscale=[[0.0, "#f4f4f4"], [1.0, "#1f4e79"]],
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate=f"query {axis} %{{y}}<br>key {axis} %{{x}}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title
        or f"layout (batch {batch}, head {head}): block density {layout.block_density():.3f}",
        xaxis_title=f"key {axis}",
        yaxis_title=f"query {axis}",
        yaxis_autorange="reversed",
        width=600,
        height=580,
    )
    return figure

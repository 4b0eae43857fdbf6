"""Figures of the layouts that sparse-attention methods select on random inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from kernels.reference import scaled_scores
from workbench.io import write_figure
from workbench.sparse import SparseMethod, get

KEPT_COLOURS = [[0.0, "#f4f4f4"], [1.0, "#1f4e79"]]


def random_qk(q_len: int, seed: int, *, d_head: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal ``q, k`` ``[1, 1, q_len, d_head]``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, q_len, d_head, generator=generator)
    k = torch.randn(1, 1, q_len, d_head, generator=generator)
    return q, k


def kept_entries(
    method: SparseMethod, q: torch.Tensor, k: torch.Tensor, *, block_size: int
) -> torch.Tensor:
    """``[q_len, kv_len]`` bool: the entries ``method`` keeps for head 0 (causal)."""
    layout = method.select(q, k, causal=True, block_size=block_size)
    return layout.to_dense(scaled_scores(q, k))[0, 0]


def methods_figure(
    names: Sequence[str | SparseMethod],
    q_len: int = 256,
    seed: int = 0,
    *,
    block_size: int = 32,
    columns: int = 4,
) -> go.Figure:
    """Grid of the causal layouts (token resolution, 1 = kept) of the given methods (registered
    names with default hyper-parameters, or configured methods) on seeded random ``q, k``."""
    methods = [get(name) if isinstance(name, str) else name for name in names]
    q, k = random_qk(q_len, seed)
    columns = min(columns, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[repr(method) for method in methods],
        horizontal_spacing=0.03,
        vertical_spacing=0.08,
    )
    for index, method in enumerate(methods):
        kept = kept_entries(method, q, k, block_size=block_size)
        figure.add_trace(
            go.Heatmap(
                z=kept.to(torch.float32).numpy(),
                colorscale=KEPT_COLOURS,
                zmin=0,
                zmax=1,
                showscale=False,
                hovertemplate="query %{y}<br>key %{x}<extra></extra>",
            ),
            row=index // columns + 1,
            col=index % columns + 1,
        )
    figure.update_yaxes(autorange="reversed")
    figure.update_annotations(font_size=10)
    figure.update_layout(
        title=f"sparse-attention layouts (causal, q_len {q_len}, seed {seed})",
        width=320 * columns,
        height=320 * rows + 80,
    )
    return figure


def write_method_figure(method: SparseMethod, path: str | Path | None = None) -> Path:
    """Write ``method``'s layout figure to ``path`` (default ``<name>.html``) and return the path."""
    return write_figure(methods_figure([method]), path or f"{method.name}.html")

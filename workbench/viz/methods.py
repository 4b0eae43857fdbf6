"""Figures of the layouts that sparse-attention methods select on random inputs.

Pure drawing: the builders take method objects (anything with a ``name`` and ``select(q, k, *,
causal, block_size) -> Layout``, as every `workbench.sparse.SparseMethod`), never names, and this
module imports no method module (a method module's ``main()`` imports it, not the other way
round); each layout is drawn in its method's fixed colour (`workbench.viz.style`, which reads the
registry's names only). Resolve names first:
``methods_figure([workbench.sparse.get(name) for name in names])``; `workbench.viz.layout` draws
a single `Layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from kernels.layout import Layout
from kernels.reference import scaled_scores
from workbench.io import write_figure
from workbench.viz.style import method_colour


class Selection(Protocol):
    """What the figures need of a method: a name and a selection."""

    name: str

    def select(self, q: torch.Tensor, k: torch.Tensor, *, causal: bool, block_size: int) -> Layout:
        """The layout of the keys each query keeps."""
        ...


def kept_colours(name: str) -> list[list[float | str]]:
    """Colour scale from dropped (light grey) to kept (the method's colour)."""
    return [[0.0, "#f4f4f4"], [1.0, method_colour(name)]]


def random_qk(q_len: int, seed: int, *, d_head: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal ``q, k`` ``[1, 1, q_len, d_head]``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, q_len, d_head, generator=generator)
    k = torch.randn(1, 1, q_len, d_head, generator=generator)
    return q, k


def kept_entries(
    method: Selection, q: torch.Tensor, k: torch.Tensor, *, block_size: int
) -> torch.Tensor:
    """``[q_len, kv_len]`` bool: the entries ``method`` keeps for head 0 (causal)."""
    layout = method.select(q, k, causal=True, block_size=block_size)
    return layout.to_dense(scaled_scores(q, k))[0, 0]


def methods_figure(
    methods: Sequence[Selection],
    q_len: int = 256,
    seed: int = 0,
    *,
    block_size: int = 32,
    columns: int = 4,
    qk: tuple[torch.Tensor, torch.Tensor] | None = None,
    source: str = "",
) -> go.Figure:
    """Grid of the causal layouts (token resolution, 1 = kept) of the given methods on seeded
    random ``q, k`` (``q_len`` tokens), or on ``qk``: one head's ``(q, k)`` ``[1, 1, q_len,
    d_head]`` (e.g. of a model's head, named in the title by ``source``), each titled by its repr
    and drawn in its method's colour."""
    for method in methods:
        if isinstance(method, str):
            raise TypeError(
                f"methods_figure takes methods, not names: resolve {method!r} first "
                "(workbench.sparse.get)"
            )
    if qk is None:
        q, k = random_qk(q_len, seed)
        source = f"seed {seed}"
    else:
        q, k = qk
        if q.dim() != 4 or q.shape[:2] != (1, 1) or k.shape[:2] != (1, 1):
            raise ValueError(
                f"qk must be one head's q, k [1, 1, len, d_head], got {tuple(q.shape)} and "
                f"{tuple(k.shape)}"
            )
        q_len = q.shape[2]
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
                z=kept.to(torch.uint8).numpy(),  # 1 byte an entry in the figure's JSON
                colorscale=kept_colours(method.name),
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
        title=f"sparse-attention layouts (causal, q_len {q_len}, {source})",
        width=320 * columns,
        height=320 * rows + 80,
    )
    return figure


def write_method_figure(method: Selection, path: str | Path | None = None) -> Path:
    """Write ``method``'s layout figure to ``path`` (default ``<name>.html``) and return the path."""
    return write_figure(methods_figure([method]), path or f"{method.name}.html")

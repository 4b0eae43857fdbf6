"""The attention pattern of one head as a figure: query x key weights labelled with the tokens,
the ground-truth relevant keys framed and a sparse method's selection tinted in the method's
colour (`workbench.viz.style`).

Long patterns are pooled for display: a pattern of more than ``max_side`` rows or columns is drawn
as the maximum weight of ``factor x factor`` cells (the kept fraction of the selection, any
relevant key) with ``factor = ceil(side / max_side)``, and a `Window` of the pattern (a zoomed
region) is drawn at full resolution once it is small enough. Positions stay the axes' units
whatever the pooling, so a window is a range of positions.

    figure = attention_figure(weights, tokens=tokens, relevant=relevant, kept=kept,
                              method="top_k(k=4)")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from toy_tasks.base import check_int
from workbench.viz.style import RELEVANT_COLOUR, method_colour, rgba

MAX_SIDE = 96
"""Rows or columns drawn at most; longer patterns (or windows) are pooled."""
TICK_LABELS = 48
"""Positions per axis up to which every tick is labelled with its token."""


@dataclass(frozen=True)
class Window:
    """Query positions ``[q0, q1)`` and key positions ``[k0, k1)`` of a pattern."""

    q0: int
    q1: int
    k0: int
    k1: int

    def __post_init__(self) -> None:
        for name in ("q0", "q1", "k0", "k1"):
            check_int(name, getattr(self, name), 0)
        if not (0 <= self.q0 < self.q1 and 0 <= self.k0 < self.k1):
            raise ValueError(f"a window needs 0 <= q0 < q1 and 0 <= k0 < k1, got {self}")

    @classmethod
    def from_ranges(
        cls,
        x_range: Sequence[float],
        y_range: Sequence[float],
        q_len: int,
        kv_len: int,
    ) -> Window:
        """The positions whose cells' centres lie inside the axis ranges of a zoomed figure
        (keys on x, queries on y, in either order; the cell nearest the middle of a range that
        holds no centre), clipped to the pattern's ``q_len x kv_len``."""

        check_int("q_len", q_len, 1)
        check_int("kv_len", kv_len, 1)

        def span(bounds: Sequence[float], size: int, name: str) -> tuple[int, int]:
            if not _finite_pair(bounds):
                raise ValueError(f"{name} must be two finite numbers, got {bounds!r}")
            low, high = sorted(float(value) for value in bounds)
            start, end = max(math.ceil(low), 0), min(math.floor(high) + 1, size)
            if end <= start:
                start = min(max(round((low + high) / 2), 0), size - 1)
                end = start + 1
            return start, end

        k0, k1 = span(x_range, kv_len, "x_range")
        q0, q1 = span(y_range, q_len, "y_range")
        return cls(q0, q1, k0, k1)


def _finite_pair(bounds: object) -> bool:
    """``bounds`` is two finite real numbers (an axis range)."""
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        return False
    return all(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        for value in bounds
    )


def _check_matrix(name: str, value: object, shape: tuple[int, int] | None = None) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a 2-D tensor (of ``shape`` if given)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2 or (shape is not None and tuple(value.shape) != shape):
        expected = "[rows, columns]" if shape is None else f"[{shape[0]}, {shape[1]}]"
        raise ValueError(f"{name} must be {expected}, got shape {tuple(value.shape)}")


def pool(values: torch.Tensor, factor: int, mode: str = "max") -> torch.Tensor:
    """``values`` ``[rows, columns]`` pooled over ``factor x factor`` cells (the last ones may be
    partial): their ``"max"`` or their ``"mean"``; ``[ceil(rows / factor), ceil(columns /
    factor)]``."""
    _check_matrix("values", values)
    check_int("factor", factor, 1)
    if mode not in ("max", "mean"):
        raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}")
    if factor == 1:
        return values
    rows, columns = values.shape
    padded = (math.ceil(rows / factor) * factor, math.ceil(columns / factor) * factor)
    grid = values.double()[None, None]
    if mode == "max":
        grid = F.pad(grid, (0, padded[1] - columns, 0, padded[0] - rows), value=-math.inf)
        return F.max_pool2d(grid, factor)[0, 0]
    # "mean": over the real cells of each group
    ones = F.pad(torch.ones_like(grid), (0, padded[1] - columns, 0, padded[0] - rows))
    grid = F.pad(grid, (0, padded[1] - columns, 0, padded[0] - rows))
    return (F.avg_pool2d(grid, factor) / F.avg_pool2d(ones, factor))[0, 0]


def pooled_positions(positions: Sequence[int], factor: int) -> list[float]:
    """The centre of each group of ``factor`` consecutive ``positions``."""
    return [
        sum(group) / len(group)
        for group in (positions[i : i + factor] for i in range(0, len(positions), factor))
    ]


def attention_figure(
    pattern: torch.Tensor,
    *,
    queries: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    relevant: torch.Tensor | None = None,
    kept: torch.Tensor | None = None,
    method: str | None = None,
    window: Window | None = None,
    max_side: int = MAX_SIDE,
    title: str = "attention pattern",
) -> go.Figure:
    """Heatmap of one head's attention weights ``pattern`` ``[rows, kv_len]`` (query x key).

    Args:
        queries: the query position of each row (default ``0 .. rows - 1``).
        tokens: ``[kv_len]`` token strings: tick labels (up to `TICK_LABELS` positions shown)
            and hover text; positions otherwise.
        relevant: ``[rows, kv_len]`` bool, the ground-truth relevant keys of each query (framed
            in `RELEVANT_COLOUR`).
        kept: ``[rows, kv_len]`` bool, a sparse method's selection, tinted in the colour of
            ``method`` (its label, e.g. ``"top_k(k=4)"``).
        window: the positions drawn (default all); axes keep position units.
        max_side: rows or columns drawn at most: more are pooled (max weight, kept fraction).
    """
    _check_matrix("pattern", pattern)
    rows, kv_len = pattern.shape
    if rows == 0 or kv_len == 0:
        raise ValueError(f"pattern must have rows and keys, got shape {tuple(pattern.shape)}")
    if pattern.is_complex() or pattern.dtype == torch.bool:
        raise ValueError(f"pattern must hold real weights, got dtype {pattern.dtype}")
    if queries is None:
        queries = list(range(rows))
    else:
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise ValueError(f"queries must be a sequence of positions, got {queries!r}")
        for query in queries:
            check_int("queries", query, 0)
        queries = list(queries)
    if len(queries) != rows:
        raise ValueError(f"queries has {len(queries)} entries for {rows} pattern rows")
    if tokens is not None:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
            raise ValueError(f"tokens must be a sequence of strings, got {tokens!r}")
        if len(tokens) != kv_len:
            raise ValueError(f"tokens has {len(tokens)} entries for {kv_len} positions")
        tokens = [str(token) for token in tokens]
    for name, mask in (("relevant", relevant), ("kept", kept)):
        if mask is not None:
            _check_matrix(name, mask, (rows, kv_len))
    if kept is not None and method is None:
        raise ValueError("kept needs the method it comes from (method=...)")
    if method is not None and not isinstance(method, str):
        raise ValueError(f"method must be a method's label (str), got {method!r}")
    if window is not None and not isinstance(window, Window):
        raise ValueError(f"window must be a Window, got {window!r}")
    check_int("max_side", max_side, 1)
    if not isinstance(title, str):
        raise ValueError(f"title must be a str, got {title!r}")

    window = window or Window(0, max(queries) + 1, 0, kv_len)
    shown_rows = [i for i, q in enumerate(queries) if window.q0 <= q < window.q1]
    shown_keys = list(range(window.k0, min(window.k1, kv_len)))
    if not shown_rows or not shown_keys:
        raise ValueError(f"the window {window} holds none of the pattern's positions")
    factor = math.ceil(max(len(shown_rows), len(shown_keys)) / max_side)

    def part(values: torch.Tensor) -> torch.Tensor:
        return values.detach().cpu()[shown_rows][:, shown_keys]

    y = pooled_positions([queries[i] for i in shown_rows], factor)
    x = pooled_positions(shown_keys, factor)
    weights = pool(part(pattern).double(), factor)
    chosen = None if kept is None else pool(part(kept).double(), factor, "mean")
    text = _hover(
        [queries[i] for i in shown_rows],
        shown_keys,
        factor,
        tokens,
        None if kept is None else chosen,
    )
    figure = go.Figure(
        go.Heatmap(
            z=weights.numpy(),
            x=x,
            y=y,
            text=text,
            hovertemplate="%{text}<br>weight %{z:.3f}<extra></extra>",
            colorscale="Blues",
            zmin=0,
            colorbar={"title": {"text": "weight" if factor == 1 else "max weight"}},
            name="weights",
        )
    )
    if chosen is not None:
        colour = method_colour(method)
        figure.add_trace(
            go.Heatmap(
                z=chosen.numpy(),
                x=x,
                y=y,
                zmin=0,
                zmax=1,
                colorscale=[[0.0, rgba(colour, 0.0)], [1.0, rgba(colour, 0.55)]],
                showscale=False,
                hoverinfo="skip",
                name=f"kept by {method}",
                showlegend=True,
            )
        )
    if relevant is not None:
        _frame_cells(figure, pool(part(relevant).double(), factor) > 0, x, y, factor)
    pooled = f" (pooled {factor}x{factor}: zoom in for full resolution)" if factor > 1 else ""
    axis = "position" if tokens is None else "token"
    figure.update_layout(
        title=f"{title}{pooled}",
        xaxis_title=f"key {axis}",
        yaxis_title=f"query {axis}",
        legend={"orientation": "h", "y": -0.15},
        height=640,
    )
    figure.update_xaxes(range=[window.k0 - 0.5, min(window.k1, kv_len) - 0.5])
    figure.update_yaxes(range=[y[-1] + factor / 2, y[0] - factor / 2])
    if tokens is not None and factor == 1 and len(shown_keys) <= TICK_LABELS:
        figure.update_xaxes(
            tickmode="array",
            tickvals=shown_keys,
            ticktext=[tokens[k] for k in shown_keys],
            tickangle=-60,
        )
    if tokens is not None and factor == 1 and len(shown_rows) <= TICK_LABELS:
        figure.update_yaxes(tickmode="array", tickvals=y, ticktext=[tokens[int(q)] for q in y])
    return figure


def _hover(
    queries: Sequence[int],
    keys: Sequence[int],
    factor: int,
    tokens: Sequence[str] | None,
    kept: torch.Tensor | None,
) -> list[list[str]]:
    """Hover text of each drawn cell: its query and key (ranges when pooled) and whether the
    selection keeps it (the kept fraction when pooled)."""

    def label(position: int) -> str:
        return f"{position}" if tokens is None else f"{position} {tokens[position]!r}"

    def span(positions: Sequence[int]) -> str:
        return label(positions[0]) if len(positions) == 1 else f"{positions[0]}-{positions[-1]}"

    row_groups = [queries[i : i + factor] for i in range(0, len(queries), factor)]
    key_groups = [keys[i : i + factor] for i in range(0, len(keys), factor)]
    text = []
    for i, row in enumerate(row_groups):
        line = []
        for j, column in enumerate(key_groups):
            cell = f"query {span(row)}<br>key {span(column)}"
            if kept is not None:
                share = float(kept[i, j])
                cell += f"<br>kept {share:.0%}" if factor > 1 else f"<br>kept: {share > 0}"
            line.append(cell)
        text.append(line)
    return text


def _frame_cells(
    figure: go.Figure, cells: torch.Tensor, x: Sequence[float], y: Sequence[float], factor: int
) -> None:
    """Outline the cells ``[len(y), len(x)]`` (bool) in `RELEVANT_COLOUR`, with a legend entry."""
    half = factor / 2 - 0.05
    for i, j in cells.nonzero().tolist():
        figure.add_shape(
            type="rect",
            x0=x[j] - half,
            x1=x[j] + half,
            y0=y[i] - half,
            y1=y[i] + half,
            line={"color": RELEVANT_COLOUR, "width": 2},
        )
    figure.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            marker={"symbol": "square-open", "color": RELEVANT_COLOUR, "size": 12},
            name="relevant keys (ground truth)",
        )
    )

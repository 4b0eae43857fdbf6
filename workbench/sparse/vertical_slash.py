"""MInference's vertical-slash pattern: a few key columns (vertical lines) that every query keeps
plus a few diagonals (slash lines, fixed distances behind the query), estimated from the attention
of the last ``last_q`` queries. As in MInference's ``vertical_and_slash_kernel``: softmax of the
last queries' scores (causal), column sums rank the verticals, diagonal sums rank the slashes; the
first ``forced_columns`` keys and the ``forced_diagonals`` nearest diagonals are always kept and
count inside the budgets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.layout import Layout
from kernels.reference import masked_softmax
from workbench.sparse.base import (
    SparseMethod,
    check_int,
    distances,
    scores_for,
    token_layout,
    visible,
)
from workbench.sparse.registry import register_method


def diagonal_sums(probs: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Sum ``probs`` ``[batch, heads, rows, kv_len]`` along each diagonal: ``[batch, heads,
    n_distances]`` where entry ``d + rows - 1`` holds the sum over entries at distance ``d`` (from
    ``distance`` ``[rows, kv_len]``, range ``[1 - rows, kv_len - 1]``)."""
    rows, kv_len = distance.shape
    index = (distance + rows - 1).expand_as(probs).flatten(2)
    sums = probs.new_zeros(*probs.shape[:2], rows + kv_len - 1)
    return sums.scatter_add_(-1, index, probs.flatten(2))


@register_method
@dataclass(frozen=True, eq=False)
class VerticalSlash(SparseMethod):
    """Top ``vertical_size`` columns and top ``slash_size`` diagonals per (batch, head).

    MInference's settings are long-context ones (forced 30 columns and 100 diagonals, default
    budgets 1000 columns / 6096 diagonals); the defaults here are scaled down to toy lengths."""

    name = "vertical_slash"
    description = "top columns + top diagonals estimated from the last 64 queries (MInference)"
    paper = "MInference 1.0: accelerating pre-filling for long-context LLMs, arXiv 2407.02490"
    input_dependent = True

    vertical_size: int = 16
    slash_size: int = 16
    last_q: int = 64
    forced_columns: int = 4
    forced_diagonals: int = 8

    def validate(self) -> None:
        check_int("vertical_size", self.vertical_size, 1)
        check_int("slash_size", self.slash_size, 1)
        check_int("last_q", self.last_q, 1)
        check_int("forced_columns", self.forced_columns, 0, self.vertical_size)
        check_int("forced_diagonals", self.forced_diagonals, 0, self.slash_size)

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        q_len, kv_len = q.shape[2], k.shape[2]
        rows = min(self.last_q, q_len)
        distance = distances(q_len, kv_len, q.device)
        scores = scores_for(q[:, :, q_len - rows :], k, scale)
        probs, _ = masked_softmax(scores, visible(q, k, causal)[q_len - rows :].expand_as(scores))
        columns = self.chosen(probs.sum(2), self.vertical_size, self.forced_columns)
        slashes = self.chosen(
            diagonal_sums(probs, distance[q_len - rows :]),
            self.slash_size,
            0,
            forced_at=rows - 1,
            forced_count=self.forced_diagonals,
        )
        # Slash index s holds distance s - (rows - 1); look every entry's distance up.
        on_slash = slashes.gather(
            -1, (distance + rows - 1).clamp(min=0).flatten().expand(*slashes.shape[:2], -1)
        ).unflatten(-1, distance.shape) & (distance + rows - 1 >= 0)
        mask = columns.unsqueeze(2) | on_slash
        return token_layout(mask, causal=causal, block_size=block_size)

    @staticmethod
    def chosen(
        importance: torch.Tensor,
        size: int,
        forced_prefix: int,
        *,
        forced_at: int = 0,
        forced_count: int = 0,
    ) -> torch.Tensor:
        """Bool ``[batch, heads, n]``: the ``size`` most important entries of ``importance``
        ``[batch, heads, n]`` after forcing entries ``[0, forced_prefix)`` and ``[forced_at,
        forced_at + forced_count)`` in (they count inside ``size``)."""
        n = importance.shape[-1]
        position = torch.arange(n, device=importance.device)
        forced = (position < forced_prefix) | (
            (position >= forced_at) & (position < forced_at + forced_count)
        )
        ranked = importance.masked_fill(forced, float("inf"))
        best = ranked.topk(min(size, n), dim=-1).indices
        return torch.zeros_like(importance, dtype=torch.bool).scatter_(-1, best, True)


def main() -> None:
    """Write this method's layout figure (``vertical_slash.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(VerticalSlash())


if __name__ == "__main__":
    main()

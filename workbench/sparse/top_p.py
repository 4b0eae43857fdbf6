"""Token-level top-p in Twilight's form: keep, per query, the fewest keys whose softmax weight
reaches ``p``, optionally inside the candidates of a base method (hierarchical selection: the
softmax is taken over the candidates only, as Twilight does over Quest's pages).

The threshold is found as in Twilight's kernel, by a binary search on the probability value
(`top_p_binary_search`), never by sorting. Twilight estimates the candidate scores with INT4
quantised keys; here the exact scores are used (the selection rule is the same). Selecting
materialises the score matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kernels.layout import Layout
from kernels.reference import masked_softmax, score_tolerance, separating_threshold
from workbench.sparse.base import SparseMethod, check_fraction, scores_for, visible
from workbench.sparse.registry import as_method, register_method

CHECK_EVERY = 8
"""Halvings of `top_p_binary_search` between two looks at whether any row is still active."""


def top_p_binary_search(
    probs: torch.Tensor, p: float, *, tolerance: float = 1e-5, max_iterations: int = 200
) -> torch.Tensor:
    """Twilight's top-p threshold on probability values.

    With ``f(x) = sum of the probs > x`` (non-increasing), keep the invariant
    ``f(low) >= target > f(high)``, ``target = min(p, row total)``, starting from ``low = 0``,
    ``high = max prob``; halve the bracket until it is narrower than ``tolerance`` or holds a single
    distinct probability (then the answer is exact: the fewest keys reaching ``p``, ties kept).

    Args:
        probs: ``[..., n]`` non-negative weights (0 for keys that take no part).
        p: mass to reach, in (0, 1].
        tolerance: bracket width at which a row stops (``0``: search until exact).
        max_iterations: safety bound on the number of halvings.

    Returns:
        ``low`` ``[...]``: keep the keys with ``probs > low``.
    """
    check_fraction("p", p)
    total = probs.sum(-1)
    target = torch.clamp(total, max=p)
    low = torch.zeros_like(total)
    high = probs.amax(-1)
    for iteration in range(max_iterations):
        inside = (probs > low.unsqueeze(-1)) & (probs <= high.unsqueeze(-1))
        smallest = torch.where(inside, probs, torch.full_like(probs, float("inf"))).amin(-1)
        largest = torch.where(inside, probs, torch.zeros_like(probs)).amax(-1)
        active = (high - low > tolerance) & (smallest < largest)
        # Whether any row is still active is read back (a host sync on a GPU) only every
        # CHECK_EVERY halvings: a row that stopped keeps its bracket, so the halvings in between
        # change nothing and the result is the same as checking after each.
        if iteration % CHECK_EVERY == 0 and not active.any():
            break
        middle = (low + high) / 2
        mass = (probs * (probs > middle.unsqueeze(-1))).sum(-1)
        enough = mass >= target
        low = torch.where(active & enough, middle, low)
        high = torch.where(active & ~enough, middle, high)
    return low


@register_method
@dataclass(frozen=True, eq=False)
class TopP(SparseMethod):
    """Keep the fewest keys whose softmax weight (over the candidates) reaches ``p``.

    ``base``: an optional method (or registered name) whose layout provides the candidates, e.g.
    ``"quest"`` as in Twilight; None means every visible key is a candidate.
    """

    name = "top_p"
    description = "per-query top-p keys by softmax mass, optionally inside a base method (Twilight)"
    paper = (
        "Twilight: adaptive attention sparsity with hierarchical top-p pruning, arXiv 2502.02770"
    )
    input_dependent = True

    p: float = 0.85
    base: SparseMethod | str | None = None
    tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if self.base is not None:
            object.__setattr__(self, "base", as_method(self.base))
        super().__post_init__()

    def validate(self) -> None:
        check_fraction("p", self.p)
        tolerance = self.tolerance
        if isinstance(tolerance, bool) or not (
            isinstance(tolerance, (int, float)) and 0.0 <= tolerance < 1.0
        ):
            raise ValueError(f"tolerance must lie in [0, 1), got {self.tolerance!r}")

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        scores = scores_for(q, k, scale)
        if self.base is None:
            candidates = visible(q, k, causal).expand_as(scores)
        else:
            base_layout = self.base.select(q, k, causal=causal, scale=scale, block_size=block_size)
            candidates = base_layout.to_dense(scores)
        threshold = self.score_threshold(scores, candidates, score_tolerance(q, k, scale))
        if self.base is None:
            return Layout.from_row_threshold(
                scores, threshold, block_q=block_size, block_k=block_size, causal=causal
            )
        kept = candidates & (scores >= threshold.unsqueeze(-1))
        layout = Layout.from_token_mask(
            kept, block_q=block_size, block_k=block_size, causal=causal, keep_token_mask=False
        )
        return dataclasses.replace(layout, token_mask=candidates, row_threshold=threshold)

    def score_threshold(
        self,
        scores: torch.Tensor,
        candidates: torch.Tensor,
        tolerance: torch.Tensor | float = 0.0,
    ) -> torch.Tensor:
        """Scaled-score threshold ``[batch, heads, q_len]`` (+inf for rows without candidates):
        the keys the binary search keeps, separated from the others by more than ``tolerance``
        (`kernels.reference.separating_threshold`: near-ties of the last kept key join it)."""
        probs, _ = masked_softmax(scores, candidates)
        low = top_p_binary_search(probs, self.p, tolerance=self.tolerance)
        count = (candidates & (probs > low.unsqueeze(-1))).sum(-1)
        return separating_threshold(scores, count, candidates, tolerance=tolerance)


def main() -> None:
    """Write this method's layout figure (``top_p.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(TopP())


if __name__ == "__main__":
    main()

"""Token-level top-k: every query keeps the ``k`` keys with the largest scores; rows with fewer than
``k`` visible keys keep them all.

Ties: keys whose scores equal the k-th, or lie within the rounding tolerance of fp32 dot products
of it (`kernels.reference.score_tolerance`, ~1e-6 of ``scale |q| max |k|``), are kept with it, so
a row may keep more than ``k`` keys. The layout's ``row_threshold`` sits in the middle of a wider
gap (`kernels.reference.separating_threshold`), which makes every kernel (forward, dQ, dK/dV,
the reference) keep the same keys whatever its order of summation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.layout import Layout
from kernels.reference import score_tolerance, top_k_threshold
from workbench.sparse.base import SparseMethod, check_int, scores_for, visible
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class TopK(SparseMethod):
    """Keep the ``k`` largest scaled scores of every query row (the semantic-focus paper uses
    k = 5 or 9). The layout carries ``row_threshold``; selecting materialises the score matrix."""

    name = "top_k"
    description = "per-query top-k keys by score (token level, row threshold)"
    paper = "Transformers learn faster with semantic focus, arXiv 2506.14095 (code rithram/spartan)"
    input_dependent = True

    k: int = 5

    def validate(self) -> None:
        check_int("k", self.k, 1)

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
        threshold = top_k_threshold(
            scores, self.k, visible(q, k, causal), tolerance=score_tolerance(q, k, scale)
        )
        return Layout.from_row_threshold(
            scores, threshold, block_q=block_size, block_k=block_size, causal=causal
        )


def main() -> None:
    """Write this method's layout figure (``top_k.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(TopK())


if __name__ == "__main__":
    main()

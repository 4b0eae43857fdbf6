"""Block top-k for prefill (MInference's block-sparse mode): score every (query block, key block)
pair by the mean-pooled query against the mean-pooled key and keep the ``k`` best key blocks of
every query block (`kernels.api.block_scores(method="mean_pooled")`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernels import api
from kernels.layout import Layout
from kernels.reference import select_top_k_blocks
from workbench.sparse.base import SparseMethod, block_layout, check_int
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class BlockTopK(SparseMethod):
    """Keep the ``k`` key blocks with the largest mean-pooled scores per query block."""

    name = "block_top_k"
    description = "top-k key blocks per query block by mean-pooled q . k (MInference block-sparse)"
    paper = "MInference 1.0: accelerating pre-filling for long-context LLMs, arXiv 2407.02490"
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"k": 2}

    k: int = 4

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
        scores = api.block_scores(
            q,
            k,
            method="mean_pooled",
            block_q=block_size,
            block_k=block_size,
            scale=scale,
            causal=causal,
        )
        return block_layout(
            select_top_k_blocks(scores, self.k), q, k, causal=causal, block_size=block_size
        )


def main() -> None:
    """Write this method's layout figure (``block_top_k.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(BlockTopK())


if __name__ == "__main__":
    main()

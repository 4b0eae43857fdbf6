"""Spark Transformer's statistical top-k (arXiv 2506.06644): keep the keys whose score is at least
``mean + std * Phi^-1(1 - k / n)`` of the row, the ``(1 - k/n)``-quantile of a normal distribution
with the row's mean and spread over its ``n`` visible keys. Linear in the row, no sort: about ``k``
keys where scores are close to normal, a different count otherwise; rows with at most ``k`` visible
keys keep them all. The kept entries are stored as a token mask (computed once in float32), so every
kernel keeps exactly them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernels.layout import Layout
from workbench.sparse.base import SparseMethod, check_int, scores_for, visible
from workbench.sparse.registry import register_method


def statistical_threshold(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """``[...]`` threshold ``mean + std * Phi^-1(1 - k / n)`` of each row of ``scores`` ``[..., n]``
    over its ``mask`` ed keys (population spread); -inf where the row has at most ``k`` keys."""
    count = mask.sum(-1)
    n = count.clamp(min=1).to(scores.dtype)
    mean = torch.where(mask, scores, 0.0).sum(-1) / n
    spread = (torch.where(mask, scores - mean.unsqueeze(-1), 0.0).square().sum(-1) / n).sqrt()
    quantile = torch.special.ndtri((1 - k / n).clamp(min=0.5 / n))
    threshold = mean + spread * quantile
    return torch.where(count > k, threshold, torch.full_like(threshold, -float("inf")))


@register_method
@dataclass(frozen=True, eq=False)
class StatisticalTopK(SparseMethod):
    """About ``k`` keys per query above a threshold from the row's score mean and spread."""

    name = "spark_top_k"
    description = "about k keys per query above mean + std * normal quantile of its scores (Spark)"
    paper = "Spark Transformer: reactivating sparsity in FFN and attention, arXiv 2506.06644"
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"k": 4}

    k: int = 8

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
        mask = visible(q, k, causal).expand_as(scores)
        kept = mask & (scores >= statistical_threshold(scores, mask, self.k).unsqueeze(-1))
        return Layout.from_token_mask(kept, block_q=block_size, block_k=block_size, causal=causal)


def main() -> None:
    """Write this method's layout figure (``spark.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(StatisticalTopK())


if __name__ == "__main__":
    main()

"""Quest: query-aware page selection. Keys are cut into pages of ``page_size``; a page's score for
a query is an upper bound of its best ``q . k``: ``sum_c max(q_c * kmin_c, q_c * kmax_c)`` with the
per-channel minimum and maximum of the page's keys; every query keeps its ``ceil(budget /
page_size)`` best visible pages (as in Twilight's `quest_selector`). Quest is a decoding method;
here every query row selects its own pages (prefill uses the same rule per row)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernels.layout import Layout, num_blocks, pool_to_blocks
from kernels.reference import repeat_kv
from workbench.sparse.base import SparseMethod, check_int, token_layout, visible
from workbench.sparse.registry import register_method


def page_scores(q: torch.Tensor, k: torch.Tensor, page_size: int) -> torch.Tensor:
    """Quest page scores ``[batch, heads, q_len, n_pages]`` float32 (unscaled: only their order
    matters): ``sum_c max(q_c * kmin_c, q_c * kmax_c)`` over each page's keys (a partial last page
    uses its real keys only)."""
    keys = repeat_kv(k, q.shape[1]).float()
    kv_len = keys.shape[2]
    pad = num_blocks(kv_len, page_size) * page_size - kv_len
    low = torch.nn.functional.pad(keys, (0, 0, 0, pad), value=float("inf"))
    high = torch.nn.functional.pad(keys, (0, 0, 0, pad), value=float("-inf"))
    k_min = low.unflatten(2, (-1, page_size)).amin(3)  # [b, h, pages, d]
    k_max = high.unflatten(2, (-1, page_size)).amax(3)
    queries = q.float().unsqueeze(3)  # [b, h, q, 1, d]
    bound = torch.maximum(queries * k_min.unsqueeze(2), queries * k_max.unsqueeze(2))
    return bound.sum(-1)


@register_method
@dataclass(frozen=True, eq=False)
class Quest(SparseMethod):
    """Per query, the best ``ceil(budget / page_size)`` pages by the Quest bound (a page counts as
    visible when any of its keys is). Quest's experiments use budgets of hundreds to thousands of
    tokens on long contexts and Twilight uses Quest with budget 8192 as its candidate selector;
    the default budget of 64 suits the short toy sequences here."""

    name = "quest"
    description = "per-query top pages by the key min/max bound (Quest, page size 16)"
    paper = "Quest: query-aware sparsity for efficient long-context LLM inference, arXiv 2406.10774"
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"budget": 16}

    page_size: int = 16
    budget: int = 64

    def validate(self) -> None:
        check_int("page_size", self.page_size, 1)
        check_int("budget", self.budget, 1)

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        kv_len = k.shape[2]
        # A page longer than the keys is their only page: cut it to kv_len (same pages and
        # budget, no padding to a huge page).
        page_size = min(self.page_size, kv_len)
        scores = page_scores(q, k, page_size)
        seen = pool_to_blocks(visible(q, k, causal), 1, page_size)  # [q_len, n_pages]
        scores = scores.masked_fill(~seen, float("-inf"))
        pages = min(num_blocks(self.budget, page_size), scores.shape[-1])
        best = scores.topk(pages, dim=-1).indices
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, best, True) & seen
        mask = chosen.repeat_interleave(page_size, dim=-1)[..., :kv_len]
        return token_layout(mask, causal=causal, block_size=block_size)


def main() -> None:
    """Write this method's layout figure (``quest.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(Quest())


if __name__ == "__main__":
    main()

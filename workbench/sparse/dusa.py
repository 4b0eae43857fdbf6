"""DuSA-style dual-stage attention (Wu et al., "DuSA: fast and accurate dual-stage sparse attention
mechanism accelerating both training and inference", NeurIPS 2024, openreview.net/forum?id=
tM5mjMfFmS): a first, intra-block stage gathers local information and a second, inter-block stage
reaches far positions through it. Our reading of the two stages (the paper's code was not read):

1. **intra-block**: every query attends to the keys of its own block of ``block`` positions;
2. **inter-block**: every query also attends to one summary per other block (earlier blocks only
   when causal): the key at the block's last position with, as value, that position's stage-1
   output (a summary of its whole block).

Both stages run through `kernels.api.sparse_attention` and are merged by their logsumexps: one
softmax over the query's own block and the summaries of the other blocks, so every earlier token
reaches the query in at most two hops. Self-attention only (``q_len == kv_len``: the summaries
are stage-1 outputs of the queries at those positions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.api import Impl
from kernels.layout import Layout, num_blocks
from kernels.reference import repeat_kv
from workbench.sparse.base import SparseMethod, check_int, visible
from workbench.sparse.branches import Branch, BranchOutput, merge_by_lse, run_branch
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class DuSA(SparseMethod):
    """Intra-block attention, then inter-block attention over block summaries (see the module
    docstring)."""

    name = "dusa"
    description = "own-block keys + one stage-1 summary per other block, merged by lse (DuSA)"
    paper = (
        "DuSA: fast and accurate dual-stage sparse attention mechanism accelerating both "
        "training and inference, NeurIPS 2024, openreview.net/forum?id=tM5mjMfFmS"
    )
    input_dependent = False

    block: int = 8

    def validate(self) -> None:
        check_int("block", self.block, 1, 2**16)

    def intra_mask(self, q_len: int, kv_len: int, causal: bool, device) -> torch.Tensor:
        """``[q_len, kv_len]`` bool: the keys of each query's own block (end-aligned)."""
        rows = torch.arange(q_len, device=device) + (kv_len - q_len)
        keys = torch.arange(kv_len, device=device)
        same = (rows[:, None] // self.block) == (keys[None, :] // self.block)
        return same & (keys[None, :] <= rows[:, None]) if causal else same

    def summary_positions(self, kv_len: int, device) -> torch.Tensor:
        """``[n_blocks]`` the last position of every block."""
        ends = (torch.arange(num_blocks(kv_len, self.block), device=device) + 1) * self.block - 1
        return ends.clamp(max=kv_len - 1)

    def inter_mask(self, q_len: int, kv_len: int, causal: bool, device) -> torch.Tensor:
        """``[q_len, n_blocks]`` bool: the blocks whose summary each query reads (every other block;
        the earlier ones when causal)."""
        own = (torch.arange(q_len, device=device) + (kv_len - q_len)) // self.block
        blocks = torch.arange(num_blocks(kv_len, self.block), device=device)
        return blocks[None, :] < own[:, None] if causal else blocks[None, :] != own[:, None]

    def branches(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
        state: nn.Module | None = None,
    ) -> list[Branch]:
        """The intra-block branch; `combine` builds the inter-block one from its output."""
        mask = self.intra_mask(q.shape[2], k.shape[2], causal, q.device)[None, None]
        layout = Layout.from_token_mask(mask, block_q=block_size, block_k=block_size, causal=causal)
        return [Branch("intra", layout)]

    def inter_branch(
        self, q: torch.Tensor, k: torch.Tensor, stage1: torch.Tensor, *, causal: bool
    ) -> Branch:
        """The inter-block branch: summary keys ``[batch, heads, n_blocks, d]`` and their stage-1
        outputs as values."""
        if q.shape[2] != k.shape[2]:
            raise ValueError(
                f"dusa needs self-attention (q_len == kv_len), got {q.shape[2]} and {k.shape[2]}"
            )
        ends = self.summary_positions(k.shape[2], q.device)
        mask = self.inter_mask(q.shape[2], k.shape[2], causal, q.device)
        layout = Layout.from_token_mask(mask[None, None], block_q=16, block_k=16)
        summary_k = repeat_kv(k, q.shape[1])[:, :, ends]
        return Branch("inter", layout, k=summary_k, v=stage1[:, :, ends].to(k.dtype))

    def combine(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        branches: list[Branch],
        outputs: list[BranchOutput],
        *,
        causal: bool,
        scale: float | None = None,
        state: nn.Module | None = None,
        impl: Impl = "auto",
    ) -> torch.Tensor:
        (intra,) = outputs
        inter_branch = self.inter_branch(q, k, intra.out, causal=causal)
        inter = run_branch(q, k, v, inter_branch, scale=scale, impl=impl)
        return merge_by_lse([intra, inter])

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The keys attended individually: the query's block and the summary positions it reads."""
        q_len, kv_len = q.shape[2], k.shape[2]
        mask = self.intra_mask(q_len, kv_len, causal, q.device)
        ends = self.summary_positions(kv_len, q.device)
        summaries = torch.zeros_like(mask)
        summaries[:, ends] = self.inter_mask(q_len, kv_len, causal, q.device)
        kept = (mask | summaries) & visible(q, k, causal)
        return Layout.from_token_mask(
            kept[None, None], block_q=block_size, block_k=block_size, causal=causal
        )


def main() -> None:
    """Write this method's layout figure (``dusa.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(DuSA())


if __name__ == "__main__":
    main()

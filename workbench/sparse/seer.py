"""SeerAttention-style learned block gate (Gao et al., "SeerAttention: learning intrinsic sparse
attention in your LLMs", arXiv 2410.13276): a small gate reads the block-pooled queries (mean) and
keys (max, min and mean, concatenated), projects each to ``d_gate`` dimensions and scores every
(query block, key block) pair by their scaled dot product; every query block keeps its ``k`` best key
blocks (and its diagonal block, so that no query is left without keys).

The gate is trained by distillation, as in the paper: its block softmax is pulled towards the
**block-max-pooled** dense attention map (the maximum attention weight inside each block, visible
blocks only, normalised along each block row) by the KL divergence ``seer_distillation``, recorded in
the state's ``losses`` whenever gradients are on. The gate reads detached q and k, so the
distillation trains the gate alone; the selection itself is not differentiable. The block size is
the layout's (`sparsify`'s ``block_size``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.layout import Layout, causal_block_mask, num_blocks
from kernels.reference import masked_softmax, mean_pool, repeat_kv, select_top_k_blocks
from workbench.sparse.base import SparseMethod, block_layout, check_int, scores_for, visible
from workbench.sparse.branches import Branch
from workbench.sparse.registry import register_method
from workbench.sparse.state import SparseState, common_dtype

LOSS = "seer_distillation"


def block_extreme(x: torch.Tensor, block: int, largest: bool) -> torch.Tensor:
    """``[batch, heads, len, d]`` -> ``[batch, heads, n_blocks, d]``: max (or min) over each block's
    rows (a partial last block over its real rows)."""
    length = x.shape[2]
    fill = -float("inf") if largest else float("inf")
    padded = nn.functional.pad(x, (0, 0, 0, num_blocks(length, block) * block - length), value=fill)
    tiles = padded.unflatten(2, (-1, block))
    return tiles.amax(3) if largest else tiles.amin(3)


class BlockGate(SparseState):
    """The gate of one layer: ``q_proj`` ``[heads, d_head, d_gate]`` and ``k_proj`` ``[heads,
    3 d_head, d_gate]`` (random normal / sqrt(fan-in), seeded by the layer)."""

    def __init__(self, heads: int, d_head: int, d_gate: int, seed: int) -> None:
        super().__init__("seer_gate")
        generator = torch.Generator().manual_seed(seed)
        self.q_proj = nn.Parameter(
            torch.randn(heads, d_head, d_gate, generator=generator) / math.sqrt(d_head)
        )
        self.k_proj = nn.Parameter(
            torch.randn(heads, 3 * d_head, d_gate, generator=generator) / math.sqrt(3 * d_head)
        )

    def logits(self, q: torch.Tensor, k: torch.Tensor, block: int, causal: bool) -> torch.Tensor:
        """``[batch, heads, n_q_blocks, n_kv_blocks]`` gate logits (-inf on blocks with no visible
        entry) of detached ``q`` ``[batch, heads, q_len, d]`` and ``k`` ``[batch, kv_heads, kv_len,
        d]``."""
        dtype = common_dtype(q, self.q_proj)
        q = q.detach().to(dtype)
        k = repeat_kv(k.detach().to(dtype), q.shape[1])
        pooled_k = torch.cat(
            [block_extreme(k, block, True), block_extreme(k, block, False), mean_pool(k, block)], -1
        )
        gate_q = torch.einsum("bhnd,hde->bhne", mean_pool(q, block), self.q_proj.to(dtype))
        gate_k = torch.einsum("bhnd,hde->bhne", pooled_k, self.k_proj.to(dtype))
        logits = gate_q @ gate_k.transpose(-1, -2) / math.sqrt(gate_q.shape[-1])
        if causal:
            seen = causal_block_mask(q.shape[2], k.shape[2], block, block).to(q.device)
            logits = logits.masked_fill(~seen, -float("inf"))
        return logits


def diagonal_blocks(q_len: int, kv_len: int, block: int, device: torch.device) -> torch.Tensor:
    """``[n_q_blocks]`` key block holding the last key visible to each query block (end-aligned)."""
    last_query = (torch.arange(num_blocks(q_len, block), device=device) + 1) * block - 1
    return (last_query.clamp(max=q_len - 1) + kv_len - q_len) // block


def block_max_target(
    q: torch.Tensor, k: torch.Tensor, block: int, *, causal: bool, scale: float | None
) -> torch.Tensor:
    """``[batch, heads, n_q_blocks, n_kv_blocks]``: the dense attention map max-pooled over every
    block, normalised along each block row (blocks without a visible entry are 0)."""
    with torch.no_grad():
        scores = scores_for(q, k, scale)
        probs = masked_softmax(scores, visible(q, k, causal).expand_as(scores))[0]
        rows = block_extreme(probs, block, True)  # [b, h, nq, kv]
        pooled = block_extreme(rows.transpose(-1, -2), block, True).transpose(-1, -2)
        return pooled / pooled.sum(-1, keepdim=True).clamp(min=1e-30)


def distillation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over block rows of ``KL(target || softmax(logits))`` (entries of target 0 add 0)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    terms = torch.where(target > 0, target * (target.clamp(min=1e-30).log() - log_probs), 0.0)
    return terms.sum(-1).mean()


@register_method
@dataclass(frozen=True, eq=False)
class LearnedBlockGate(SparseMethod):
    """Top-``k`` key blocks per query block by a learned gate (see the module docstring)."""

    name = "seer_gate"
    description = "top-k key blocks by a learned gate on pooled q / k, distilled (SeerAttention)"
    paper = "SeerAttention: learning intrinsic sparse attention in your LLMs, arXiv 2410.13276"
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"k": 2}

    k: int = 2
    d_gate: int = 16

    def validate(self) -> None:
        check_int("k", self.k, 1)
        check_int("d_gate", self.d_gate, 1, 4096)

    def state_module(self, *, layer: int, heads: int, d_head: int) -> BlockGate:
        return BlockGate(heads, d_head, self.d_gate, seed=layer)

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
        state = self.default_state(q) if state is None else state
        logits = state.logits(q, k, block_size, causal)
        if torch.is_grad_enabled():
            target = block_max_target(q, k, block_size, causal=causal, scale=scale)
            state.losses[LOSS] = distillation_loss(logits, target)
        ranking = logits.detach().clone()  # the diagonal block first, by the largest finite score
        rows = torch.arange(logits.shape[2], device=q.device)
        diagonal = diagonal_blocks(q.shape[2], k.shape[2], block_size, q.device)
        ranking[..., rows, diagonal] = torch.finfo(ranking.dtype).max
        chosen = select_top_k_blocks(ranking, self.k)
        return [
            Branch("selection", block_layout(chosen, q, k, causal=causal, block_size=block_size))
        ]

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The selection of a freshly initialised gate."""
        with torch.no_grad():
            branch = self.branches(q, k, k, causal=causal, scale=scale, block_size=block_size)[0]
        return branch.layout


def main() -> None:
    """Write this method's layout figure (``seer.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(LearnedBlockGate())


if __name__ == "__main__":
    main()

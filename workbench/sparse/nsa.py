"""Native Sparse Attention (Yuan et al., arXiv 2502.11089): three branches, each attention of the
query over its own keys with its own softmax, mixed by learned gates ``o = sum_c g_c o_c``:

* **compressed**: blocks of ``l = compress_block`` keys taken every ``d = compress_stride``
  positions, each pooled into one key and one value by a learned map ``phi`` (the paper's MLP with
  an intra-block position encoding; here one linear map of the flattened block, initialised as mean
  pooling, so position-dependent weights play the position encoding's part); a query sees a block
  once all of its keys are visible;
* **selected**: the keys of the ``top_n`` selection blocks of ``l' = select_block`` keys with the
  largest importance, including the first block and the two local ones (the paper's 1 initial + 2
  local). Importance: the compressed branch's attention probabilities, each spread evenly over the
  ``l`` keys of its block and summed per selection block (the paper's eq. 9 sums the compressed
  blocks overlapping each selection block), then summed over the query heads sharing a key head
  (eq. 10, one selection per GQA group). The selection is not differentiable (as in the paper);
* **window**: the ``window`` latest keys.

Gates ``g = sigmoid(W_h q + b_h)`` per head and branch: the paper's gate MLP reads the layer's input
``x``, which the attention core does not see, so the gate reads the query instead.

The paper's sizes (l = 32, d = 16, l' = 64, n = 16, w = 512 at 64K tokens) keep nothing out of a
toy sequence of 64-256 tokens; the defaults scale them down (l = 8, d = 4, l' = 8, n = 4, w = 16)
keeping the paper's ratios l = 2d and l' a multiple of d. Branches run through
`kernels.api.sparse_attention`; `naive_nsa`-style references live in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.api import Impl
from kernels.layout import Layout, num_blocks
from kernels.reference import masked_softmax, scaled_scores
from workbench.sparse.base import SparseMethod, check_int, distances
from workbench.sparse.branches import Branch, BranchOutput, coverage, gated_sum
from workbench.sparse.registry import register_method
from workbench.sparse.state import SparseState, common_dtype

BRANCHES = ("compressed", "selected", "window")


class NSAState(SparseState):
    """NSA's learned parts for one layer: the pooling maps of keys and values and the gates.

    Attributes:
        pool_k, pool_v: ``[l, d_head, d_head]`` weights of ``phi(block) = sum_p block_p W_p + b``
            (initialised to ``I / l``: mean pooling), biases ``[d_head]``.
        gate_weight: ``[heads, d_head, 3]``, gate_bias ``[heads, 3]`` (initialised to 0: gates 1/2).
    """

    def __init__(self, heads: int, d_head: int, block: int) -> None:
        super().__init__("nsa")
        eye = torch.eye(d_head).expand(block, d_head, d_head) / block
        self.pool_k = nn.Parameter(eye.clone())
        self.pool_v = nn.Parameter(eye.clone())
        self.pool_k_bias = nn.Parameter(torch.zeros(d_head))
        self.pool_v_bias = nn.Parameter(torch.zeros(d_head))
        self.gate_weight = nn.Parameter(torch.zeros(heads, d_head, len(BRANCHES)))
        self.gate_bias = nn.Parameter(torch.zeros(heads, len(BRANCHES)))

    def gates(self, q: torch.Tensor) -> torch.Tensor:
        """``[batch, heads, q_len, 3]`` gates of ``q`` ``[batch, heads, q_len, d_head]``."""
        dtype = common_dtype(q, self.gate_weight)
        logits = torch.einsum("bhqd,hdc->bhqc", q.to(dtype), self.gate_weight.to(dtype))
        return torch.sigmoid(logits + self.gate_bias[:, None, :].to(dtype))


def compress(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int
) -> torch.Tensor:
    """Pooled blocks ``[batch, kv_heads, n_blocks, d_head]`` of ``x`` ``[batch, kv_heads, len,
    d_head]``: block ``c`` holds positions ``c * stride .. c * stride + l - 1`` (``l =
    weight.shape[0]``, whole blocks only). In ``x``'s dtype, computed in `common_dtype`."""
    block, dtype = weight.shape[0], common_dtype(x, weight)
    blocks = x.to(dtype).unfold(2, block, stride)  # [b, h, n, d, l]
    pooled = torch.einsum("bhndp,pde->bhne", blocks, weight.to(dtype)) + bias.to(dtype)
    return pooled.to(x.dtype)


def compressed_count(kv_len: int, block: int, stride: int) -> int:
    """Number of whole compressed blocks in ``kv_len`` keys."""
    return 0 if kv_len < block else (kv_len - block) // stride + 1


def query_positions(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """``[q_len]`` end-aligned position of each query among the keys."""
    return torch.arange(q_len, device=device) + (kv_len - q_len)


@register_method
@dataclass(frozen=True, eq=False)
class NSA(SparseMethod):
    """Native Sparse Attention (see the module docstring); trainable: `NSAState`."""

    name = "nsa"
    description = "compressed blocks + top-n blocks by compressed scores + window, gated (NSA)"
    paper = (
        "Native sparse attention: hardware-aligned and natively trainable sparse attention, "
        "arXiv 2502.11089"
    )
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"window": 8}

    compress_block: int = 8
    compress_stride: int = 4
    select_block: int = 8
    top_n: int = 4
    window: int = 16

    def validate(self) -> None:
        check_int("compress_block", self.compress_block, 1, 256)
        check_int("compress_stride", self.compress_stride, 1, self.compress_block)
        check_int("select_block", self.select_block, 1, 2**16)
        check_int("top_n", self.top_n, 3)
        check_int("window", self.window, 1)

    def state_module(self, *, layer: int, heads: int, d_head: int) -> NSAState:
        return NSAState(heads, d_head, self.compress_block)

    # ------------------------------------------------------------------ the three selections
    def compressed_mask(self, q_len: int, kv_len: int, causal: bool, device) -> torch.Tensor:
        """``[q_len, n_compressed]`` bool: the compressed blocks each query sees (all of a block's
        keys visible)."""
        n = compressed_count(kv_len, self.compress_block, self.compress_stride)
        ends = torch.arange(n, device=device) * self.compress_stride + self.compress_block - 1
        if not causal:
            return torch.ones(q_len, n, dtype=torch.bool, device=device)
        return ends[None, :] <= query_positions(q_len, kv_len, device)[:, None]

    def block_importance(
        self, compressed_probs: torch.Tensor, kv_len: int, kv_heads: int
    ) -> torch.Tensor:
        """``[batch, heads, q_len, n_select_blocks]`` importance of the selection blocks from the
        compressed branch's probabilities ``[batch, heads, q_len, n_compressed]`` (summed over
        the heads of each GQA group)."""
        device = compressed_probs.device
        n = compressed_probs.shape[-1]
        keys = torch.arange(kv_len, device=device)
        starts = torch.arange(n, device=device) * self.compress_stride
        in_compressed = (keys >= starts[:, None]) & (keys < starts[:, None] + self.compress_block)
        in_selected = keys // self.select_block == torch.arange(
            num_blocks(kv_len, self.select_block), device=device
        ).unsqueeze(1)
        overlap = in_compressed.float() @ in_selected.float().T / self.compress_block
        importance = compressed_probs.float() @ overlap  # [b, h, q, n_sel]
        b, h, q_len, n_sel = importance.shape
        grouped = importance.reshape(b, kv_heads, h // kv_heads, q_len, n_sel).sum(2)
        return grouped.repeat_interleave(h // kv_heads, dim=1)

    def selected_mask(self, importance: torch.Tensor, kv_len: int, causal: bool) -> torch.Tensor:
        """``[batch, heads, q_len, kv_len]`` bool: the keys of the ``top_n`` selection blocks by
        ``importance`` ``[batch, heads, q_len, n_select_blocks]`` among the visible blocks, the
        first and the two local blocks always included."""
        device = importance.device
        q_len, n_sel = importance.shape[2:]
        position = query_positions(q_len, kv_len, device)
        blocks = torch.arange(n_sel, device=device)
        local = position // self.select_block
        forced = (blocks == 0) | (blocks == local[:, None]) | (blocks == local[:, None] - 1)
        visible = blocks[None, :] * self.select_block <= position[:, None]
        if not causal:
            visible = torch.ones_like(visible)
        ranking = importance.masked_fill(forced, float("inf")).masked_fill(~visible, -float("inf"))
        top = ranking.topk(min(self.top_n, n_sel), dim=-1).indices
        chosen = torch.zeros_like(ranking, dtype=torch.bool).scatter_(-1, top, True)
        chosen = chosen & (ranking > -float("inf"))
        tokens = chosen.repeat_interleave(self.select_block, dim=-1)[..., :kv_len]
        return tokens & self.visible_keys(q_len, kv_len, causal, device)

    def window_mask(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """``[q_len, kv_len]`` bool: the ``window`` latest keys of each query."""
        distance = distances(q_len, kv_len, device)
        return (distance >= 0) & (distance < self.window)

    @staticmethod
    def visible_keys(q_len: int, kv_len: int, causal: bool, device) -> torch.Tensor:
        distance = distances(q_len, kv_len, device)
        return distance >= 0 if causal else torch.ones_like(distance, dtype=torch.bool)

    # ------------------------------------------------------------------ the method
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
        q_len, kv_len, device = q.shape[2], k.shape[2], q.device
        visible = self.compressed_mask(q_len, kv_len, causal, device)
        if visible.shape[1]:
            k_cmp = compress(k, state.pool_k, state.pool_k_bias, self.compress_stride)
            v_cmp = compress(v, state.pool_v, state.pool_v_bias, self.compress_stride)
        else:  # no whole block yet: one placeholder key that no query sees
            k_cmp, v_cmp = k[:, :, :1], v[:, :, :1]
            visible = torch.zeros(q_len, 1, dtype=torch.bool, device=device)
        compressed = Layout.from_token_mask(visible[None, None], block_q=16, block_k=16)
        with torch.no_grad():
            scores = scaled_scores(q, k_cmp, scale)
            probs = masked_softmax(scores, visible.expand_as(scores))[0]
            importance = self.block_importance(probs, kv_len, k.shape[1])
        selected = self.selected_mask(importance, kv_len, causal)
        window = self.window_mask(q_len, kv_len, device)[None, None]
        token_layout = dict(block_q=block_size, block_k=block_size, causal=causal)
        return [
            Branch("compressed", compressed, k=k_cmp, v=v_cmp),
            Branch("selected", Layout.from_token_mask(selected, **token_layout)),
            Branch("window", Layout.from_token_mask(window, **token_layout)),
        ]

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
        state = self.default_state(q) if state is None else state
        return gated_sum(outputs, state.gates(q))

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The keys attended individually: the selected blocks and the window (the compressed
        branch attends pooled keys), with a fresh state."""
        return coverage(self.branches(q, k, k, causal=causal, scale=scale, block_size=block_size))


def main() -> None:
    """Write this method's layout figure (``nsa.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(NSA())


if __name__ == "__main__":
    main()

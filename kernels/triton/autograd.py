"""Block-sparse attention as the custom op ``workbench_kernels::block_sparse_attention``: autograd
through the Triton backward kernels, and a fake (meta) implementation so that ``torch.compile``
traces it as one opaque node.

The op takes the `Layout` as its tensors and scalar fields (a dataclass is no op argument); it
returns ``(out, lse)``, and ``lse`` is marked non-differentiable (the backward kernels give no
gradient through it).
"""

import torch

from kernels.layout import Layout
from kernels.triton import block_sparse_attention as kernels


def triton_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable block-sparse attention (see `kernels.api.sparse_attention`).

    Args:
        q: ``[batch, heads, q_len, d_head]``; k, v: ``[batch, kv_heads, kv_len, d_head]``.
        layout: the `Layout` for (q_len, kv_len).
        scale: score scale.

    Returns:
        ``out`` ``[batch, heads, q_len, d_head]`` in q's dtype, ``lse`` ``[batch, heads, q_len]``
        float32 (no gradient).
    """
    return block_sparse_attention(
        q,
        k,
        v,
        layout.kv_indices,
        layout.kv_counts,
        layout.token_mask,
        layout.row_threshold,
        layout.block_q,
        layout.block_k,
        layout.causal,
        float(scale),
    )


def _layout(
    q: torch.Tensor,
    k: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    token_mask: torch.Tensor | None,
    row_threshold: torch.Tensor | None,
    block_q: int,
    block_k: int,
    causal: bool,
) -> Layout:
    """The caller's `Layout` again from the op's arguments (`Layout.trusted`: it was validated
    when the caller built it)."""
    return Layout.trusted(
        kv_indices=kv_indices,
        kv_counts=kv_counts,
        q_len=q.shape[2],
        kv_len=k.shape[2],
        block_q=block_q,
        block_k=block_k,
        causal=causal,
        token_mask=token_mask,
        row_threshold=row_threshold,
    )


@torch.library.custom_op("workbench_kernels::block_sparse_attention", mutates_args=())
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    token_mask: torch.Tensor | None,
    row_threshold: torch.Tensor | None,
    block_q: int,
    block_k: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of block-sparse attention; the layout given field by field."""
    layout = _layout(
        q, k, kv_indices, kv_counts, token_mask, row_threshold, block_q, block_k, causal
    )
    return kernels.forward(q, k, v, layout, scale)


@block_sparse_attention.register_fake
def _block_sparse_attention_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("workbench_kernels::block_sparse_attention_backward", mutates_args=())
def block_sparse_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    token_mask: torch.Tensor | None,
    row_threshold: torch.Tensor | None,
    block_q: int,
    block_k: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of block-sparse attention (an op of its own, so that AOT autograd traces
    the backward graph with fake tensors too)."""
    layout = _layout(
        q, k, kv_indices, kv_counts, token_mask, row_threshold, block_q, block_k, causal
    )
    return kernels.backward(q, k, v, out, lse, grad_out, layout, scale)


@block_sparse_attention_backward.register_fake
def _block_sparse_attention_backward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, kv_indices, kv_counts, token_mask, row_threshold, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_counts, token_mask, row_threshold)
    ctx.scalars = scalars  # block_q, block_k, causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None) -> tuple:
    q, k, v, out, lse, *layout_tensors = ctx.saved_tensors
    grads = block_sparse_attention_backward(
        q, k, v, out, lse, grad_out, *layout_tensors, *ctx.scalars
    )
    return *grads, *(None for _ in range(len(layout_tensors) + len(ctx.scalars)))


block_sparse_attention.register_autograd(_backward, setup_context=_setup_context)

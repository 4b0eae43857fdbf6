"""Block-sparse attention as the ops ``workbench_kernels::block_sparse_attention`` and
``workbench_kernels::block_sparse_attention_backward`` (registered with ``torch.library.define`` /
``impl``, each with a fake implementation so that ``torch.compile`` traces them as opaque nodes),
made differentiable by a ``torch.autograd.Function`` around the forward op.

The ops take the `Layout` as its tensors and scalar fields (a dataclass is no op argument); the
forward returns ``(out, lse)``, both differentiable (the logsumexp's gradient enters the backward
kernels through ``delta``; a composite method merging branches by logsumexp needs it). Autograd
lives outside the ops, in `BlockSparseAttention`: short calls are host-bound, and this costs less
host time per forward+backward than ``torch.library.custom_op`` with its ``register_autograd``
(measured: `bench/NOTES.md`, "Autograd outside the ops").
"""

from collections.abc import Callable
from typing import Any

import torch

from kernels.dispatch import Grid, Loads, check_variant
from kernels.layout import Layout
from kernels.triton import block_sparse_attention as kernels
from kernels.triton import variants

FORWARD_OP = "workbench_kernels::block_sparse_attention"
BACKWARD_OP = "workbench_kernels::block_sparse_attention_backward"


def triton_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    scale: float,
    loads: Loads = "auto",
    grid: Grid = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable block-sparse attention (see `kernels.api.sparse_attention`).

    Args:
        q: ``[batch, heads, q_len, d_head]``; k, v: ``[batch, kv_heads, kv_len, d_head]``.
        layout: the `Layout` for (q_len, kv_len).
        scale: score scale.
        loads, grid: the kernel variant (`kernels.triton.variants`), resolved inside the ops (on
            the real tensors, also under ``torch.compile``).

    Returns:
        ``out`` ``[batch, heads, q_len, d_head]`` in q's dtype, ``lse`` ``[batch, heads, q_len]``
        float32.
    """
    check_variant(loads, grid)
    return BlockSparseAttention.apply(
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
        loads,
        grid,
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
    loads: str,
    grid: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of block-sparse attention; the layout given field by field, the variant by
    ``loads`` and ``grid`` (`variants.choose`)."""
    layout = _layout(
        q, k, kv_indices, kv_counts, token_mask, row_threshold, block_q, block_k, causal
    )
    return kernels.forward(q, k, v, layout, scale, variants.choose(q, k, v, layout, loads, grid))


def block_sparse_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    token_mask: torch.Tensor | None,
    row_threshold: torch.Tensor | None,
    block_q: int,
    block_k: int,
    causal: bool,
    scale: float,
    loads: str,
    grid: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of block-sparse attention given the gradients of ``out`` and (optional)
    ``lse`` (an op of its own, so that AOT autograd traces the backward graph with fake tensors
    too)."""
    layout = _layout(
        q, k, kv_indices, kv_counts, token_mask, row_threshold, block_q, block_k, causal
    )
    variant = variants.choose(q, k, v, layout, loads, grid, backward=True)
    return kernels.backward(q, k, v, out, lse, grad_out, layout, scale, variant, grad_lse)


def _forward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _backward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _register(
    name: str, function: Callable[..., Any], fake: Callable[..., Any]
) -> torch._ops.OpOverload:
    """Define the op ``name`` with ``function``'s schema, its CPU (Triton's interpreter) and CUDA
    implementation and its fake; returns the op."""
    torch.library.define(name, torch.library.infer_schema(function, mutates_args=()))
    torch.library.impl(name, ("cpu", "cuda"), function)
    torch.library.register_fake(name, fake)
    namespace, op_name = name.split("::")
    return getattr(getattr(torch.ops, namespace), op_name).default


forward_op = _register(FORWARD_OP, block_sparse_attention, _forward_fake)
backward_op = _register(BACKWARD_OP, block_sparse_attention_backward, _backward_fake)


class BlockSparseAttention(torch.autograd.Function):
    """Autograd of `forward_op`: the backward runs `backward_op` on the saved inputs, output and
    logsumexp (the Triton backward kernels recompute the probabilities). Gradients are not
    materialised: an unused ``lse`` costs nothing, an unused ``out`` gets zeros."""

    @staticmethod
    def forward(ctx, q, k, v, kv_indices, kv_counts, token_mask, row_threshold, *scalars):
        out, lse = forward_op(q, k, v, kv_indices, kv_counts, token_mask, row_threshold, *scalars)
        ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_counts, token_mask, row_threshold)
        ctx.scalars = scalars  # block_q, block_k, causal, scale, loads, grid
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor | None, grad_lse: torch.Tensor | None) -> tuple:
        q, k, v, out, lse, *layout_tensors = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grads = backward_op(q, k, v, out, lse, grad_out, grad_lse, *layout_tensors, *ctx.scalars)
        return *grads, *(None for _ in range(len(layout_tensors) + len(ctx.scalars)))

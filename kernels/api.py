"""Public entry points of the backend. Each takes ``impl``:

* ``"reference"``: the readable torch oracle (`kernels.reference`), any device.
* ``"triton"``: the Triton kernels; needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1``
  set before triton is first imported. If they cannot run, a ``RuntimeError`` says why: there is
  no silent fallback.
* ``"auto"``: triton for CUDA tensors when triton is importable, reference otherwise; the choice is
  logged at debug level (logger ``kernels.api``).

The choice itself (`resolve_impl`, `interpret_mode`, ...) lives in `kernels.dispatch`, which the
Triton files import too; it is re-exported here.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from kernels import reference
from kernels.dispatch import (
    IMPLS,
    Grid,
    Impl,
    Loads,
    check_impl,
    check_variant,
    interpret_mode,
    resolve_impl,
    triton_importable,
    triton_unavailable_reason,
)
from kernels.layout import Layout
from kernels.reference import RowStats

__all__ = [
    "IMPLS",
    "Impl",
    "block_scores",
    "check_impl",
    "interpret_mode",
    "resolve_impl",
    "row_stats",
    "sparse_attention",
    "triton_importable",
    "triton_unavailable_reason",
]

logger = logging.getLogger(__name__)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    impl: Impl = "auto",
    loads: Loads = "auto",
    grid: Grid = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over the keys ``layout`` keeps; differentiable in q, k and v.

    Args:
        q: ``[batch, heads, q_len, d_head]``.
        k, v: ``[batch, kv_heads, kv_len, d_head]`` with ``heads % kv_heads == 0`` (GQA).
        layout: a `Layout` for (q_len, kv_len); batch/heads 1 or matching q.
        scale: score scale, default ``1 / sqrt(d_head)``.
        return_lse: also return the row logsumexp ``[batch, heads, q_len]`` float32 (-inf for rows
            that keep no key; their output is 0).
        loads, grid: the Triton kernels' variant (`kernels.triton.variants`): tile loads through
            ``"pointers"`` or tensor ``"descriptors"`` (TMA, warp specialisation; Hopper), and a
            forward grid of one program per query ``"tiles"`` or ``"persistent"`` programs over a
            work list. ``"auto"`` chooses by device, strides and layout (logged at debug level);
            a forced variant that cannot run raises ``ValueError``. Ignored by the reference.

    Returns:
        ``out`` ``[batch, heads, q_len, d_head]`` in q's dtype (and ``lse`` if asked).
    """
    reference.check_attention_inputs(q, k, v, layout)
    scale = reference.resolve_scale(scale, q.shape[-1])
    check_variant(loads, grid)
    if resolve_impl(impl, "sparse_attention", q, k, v) == "reference":
        out, lse = reference.attention(q, k, v, layout, scale=scale)
    else:
        from kernels.triton.autograd import triton_sparse_attention

        out, lse = triton_sparse_attention(q, k, v, layout, scale, loads, grid)
    return (out, lse) if return_lse else out


def row_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    ps: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99),
    selection: Layout | None = None,
    relevant_positions: torch.Tensor | None = None,
    restrict: Layout | None = None,
    budgets: Literal["exact", "bracket"] = "exact",
    budget_rtol: float | None = None,
    impl: Impl = "auto",
) -> RowStats:
    """Per-row statistics of the dense (optionally causal) attention of ``q`` over ``k`` without
    materialising the score matrix (triton): logsumexp, max score, entropy, top-p budgets for every
    mass in ``ps``, the mass inside ``selection`` and on ``relevant_positions``
    (``[batch, q_len, R]`` or ``[batch, heads, q_len, R]``, -1 padded). See `RowStats`.
    ``ps=()`` skips the budgets, whose search passes are most of the Triton path's cost.
    ``budgets="bracket"``: one pass gives an estimate and an interval
    ``[top_p_budget_low, top_p_budget_high]`` holding the exact budget (exact where it closes);
    ``budget_rtol`` refines the intervals wider than it (relative) by search passes (see
    `kernels.triton.row_stats`). The reference's budgets are exact in both modes.

    ``restrict``: a `Layout`; the statistics are then those of the attention over the entries it
    keeps, as `sparse_attention` computes it with that layout. Only the reference implements it
    (it materialises the scores): ``impl="auto"`` takes the reference then, ``"triton"`` raises."""
    reference.check_ps(tuple(ps))
    scale = reference.resolve_scale(scale, q.shape[-1])
    arguments = dict(
        scale=scale,
        causal=causal,
        ps=tuple(ps),
        selection=selection,
        relevant_positions=relevant_positions,
        budgets=budgets,
        budget_rtol=budget_rtol,
    )
    if restrict is not None:
        check_impl(impl)
        if impl == "triton":
            raise RuntimeError(
                "row_stats(impl='triton') cannot run: restrict has no Triton kernel (use "
                "impl='reference' or 'auto')"
            )
        logger.debug("row_stats(restrict=...) uses reference (no Triton kernel restricts)")
        return reference.row_stats(q, k, restrict=restrict, **arguments)
    if resolve_impl(impl, "row_stats", q, k) == "reference":
        return reference.row_stats(q, k, **arguments)
    from kernels.triton.row_stats import row_stats as triton_row_stats

    return triton_row_stats(q, k, **arguments)


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    method: Literal["mean_pooled", "antidiagonal"] = "mean_pooled",
    block_q: int = 64,
    block_k: int = 64,
    stride: int = 8,
    scale: float | None = None,
    causal: bool = False,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Block-level importance scores ``[batch, heads, n_q_blocks, n_kv_blocks]`` float32 used to
    select blocks (see `kernels.reference.mean_pooled_block_scores` and
    `kernels.reference.antidiagonal_block_scores`; the antidiagonal method needs
    ``block_q == block_k`` and ``stride`` dividing it)."""
    if method not in ("mean_pooled", "antidiagonal"):
        raise ValueError(f"method must be 'mean_pooled' or 'antidiagonal', got {method!r}")
    if method == "antidiagonal" and block_q != block_k:
        raise ValueError(
            f"the antidiagonal method needs block_q == block_k, got {block_q}, {block_k}"
        )
    scale = reference.resolve_scale(scale, q.shape[-1])
    use = resolve_impl(impl, "block_scores", q, k)
    if use == "reference":
        module = reference
    else:
        from kernels.triton import block_scores as module
    if method == "mean_pooled":
        return module.mean_pooled_block_scores(
            q, k, block_q=block_q, block_k=block_k, scale=scale, causal=causal
        )
    return module.antidiagonal_block_scores(
        q, k, block=block_q, stride=stride, scale=scale, causal=causal
    )

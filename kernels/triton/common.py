"""What the Triton kernels share: the dtype table, input checks and autotune configurations, tile
loads and stores, and the per-token rule by which a `kernels.layout.Layout` keeps an entry.

The jit helpers are inlined into the kernels that call them (Triton inlines ``@triton.jit``
functions), so a kernel compiles to the same code whether a helper lives here or beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpret_mode, interpreter_dtype_reason

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Input dtypes of the kernels (dots in the input dtype, fp32 accumulation)."""
MAX_D_HEAD = 256
"""Largest head dimension of the attention and row-statistics kernels."""
MIN_DOT = 16
"""Smallest tile edge `tl.dot` accepts."""

TileShape = tuple[int, int, int, int]
"""``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of one autotune configuration."""


def block_d(d_head: int) -> int:
    """Head-dimension tile: ``d_head`` padded to a power of two, at least `MIN_DOT` (the d axis is
    masked beyond ``d_head``)."""
    return max(triton.next_power_of_2(d_head), MIN_DOT)


def check_dtypes(**tensors: torch.Tensor) -> None:
    """``ValueError`` unless the named tensors share one dtype of `SUPPORTED_DTYPES`."""
    names = list(tensors)
    dtypes = [tensor.dtype for tensor in tensors.values()]
    if dtypes[0] not in SUPPORTED_DTYPES or any(dtype != dtypes[0] for dtype in dtypes):
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        got = ", ".join(str(dtype) for dtype in dtypes)
        raise ValueError(f"{listed} must share one dtype of {SUPPORTED_DTYPES}, got {got}")
    reason = interpreter_dtype_reason(tuple(tensors.values()))
    if reason is not None:
        raise ValueError(reason)


def check_d_head(d_head: int) -> None:
    """``ValueError`` when ``d_head`` exceeds `MAX_D_HEAD`."""
    if d_head > MAX_D_HEAD:
        raise ValueError(f"d_head must be at most {MAX_D_HEAD}, got {d_head}")


def check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    """``ValueError`` unless ``q`` ``[batch, heads, q_len, d_head]`` and ``k``
    ``[batch, kv_heads, kv_len, d_head]`` can go into one kernel: 4-d, one supported dtype, one
    device, one batch and head dimension, ``heads`` a multiple of ``kv_heads``."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q and k must be 4-d: [batch, heads, len, d_head]")
    check_dtypes(q=q, k=k)
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got {q.device} and {k.device}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and d_head")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k heads ({k.shape[1]})")


def gpu_configs(shapes: Sequence[TileShape], **constexprs: object) -> list[triton.Config]:
    """One configuration per ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, each also setting
    ``constexprs``."""
    return [
        triton.Config(
            {"BLOCK_M": m, "BLOCK_N": n, **constexprs}, num_warps=warps, num_stages=stages
        )
        for m, n, warps, stages in shapes
    ]


def autotune_configs(
    shapes: Sequence[TileShape], *, interpreter_tile: int, **constexprs: object
) -> list[triton.Config]:
    """`gpu_configs` of ``shapes``; under the interpreter a single configuration of
    ``interpreter_tile`` x ``interpreter_tile`` tiles (autotuning there is slow and pointless)."""
    if interpret_mode():
        shapes = [(interpreter_tile, interpreter_tile, 1, 1)]
    return gpu_configs(shapes, **constexprs)


def tile_shape(config: triton.Config) -> TileShape:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of ``config``."""
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


# ---------------------------------------------------------------------------- tile loads and stores
@triton.jit
def load_rows(
    ptr,
    rows,
    stride_row,
    cols,
    stride_col,
    n_rows,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NEGATIVE_ROWS: tl.constexpr = False,
):
    """``[len(rows), BLOCK_D]`` tile of a ``[n_rows, D_HEAD]`` matrix, zeros outside it; with
    NEGATIVE_ROWS rows ``< 0`` (padding) are masked too."""
    mask = rows[:, None] < n_rows
    if NEGATIVE_ROWS:
        mask = mask & (rows[:, None] >= 0)
    if BLOCK_D != D_HEAD:
        mask = mask & (cols[None, :] < D_HEAD)
    return tl.load(
        ptr + rows[:, None] * stride_row + cols[None, :] * stride_col, mask=mask, other=0.0
    )


@triton.jit
def tile_source(
    ptr,
    n_rows,
    stride_row,
    D_HEAD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
):
    """Where `load_tile` reads ``[BLOCK_ROWS, BLOCK_D]`` tiles of the ``[n_rows, D_HEAD]`` matrix
    at ``ptr`` (unit stride along d): with DESCRIPTORS a device-side tensor descriptor (TMA loads on
    Hopper, zeros outside the matrix), otherwise the pointer itself. One matrix per descriptor
    (not one 4-d descriptor per tensor): Triton 3.9's warp specialisation splits 2-d tiles only."""
    if DESCRIPTORS:
        source = tl.make_tensor_descriptor(
            ptr,
            shape=[n_rows, D_HEAD],
            strides=[stride_row, 1],
            block_shape=[BLOCK_ROWS, BLOCK_D],
        )
    else:  # one return (see `load_tile`)
        source = ptr
    return source


@triton.jit
def load_tile(
    source,
    row0,
    stride_row,
    stride_col,
    n_rows,
    D_HEAD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
):
    """Rows ``[row0, row0 + BLOCK_ROWS)`` of a `tile_source`'s matrix, ``[BLOCK_ROWS, BLOCK_D]``,
    zeros outside the ``[n_rows, D_HEAD]`` matrix."""
    # One return: Triton compiles the statements after a constexpr `if` that returns.
    if DESCRIPTORS:
        tile = source.load([row0, 0])
    else:
        tile = load_rows(
            source,
            row0 + tl.arange(0, BLOCK_ROWS),
            stride_row,
            tl.arange(0, BLOCK_D),
            stride_col,
            n_rows,
            D_HEAD,
            BLOCK_D,
        )
    return tile


@triton.jit
def store_rows(
    ptr,
    tile,
    rows,
    stride_row,
    cols,
    stride_col,
    n_rows,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Store the rows ``< n_rows`` and columns ``< D_HEAD`` of ``tile`` (cast to ptr's dtype)."""
    mask = rows[:, None] < n_rows
    if BLOCK_D != D_HEAD:
        mask = mask & (cols[None, :] < D_HEAD)
    tl.store(
        ptr + rows[:, None] * stride_row + cols[None, :] * stride_col,
        tile.to(ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def load_threshold(ptr, rows, stride_row, q_len, HAS_THRESHOLD: tl.constexpr):
    """fp32 score thresholds of ``rows`` (a dummy 0 when the layout has none)."""
    if HAS_THRESHOLD:
        return tl.load(ptr + rows * stride_row, mask=rows < q_len, other=0.0).to(tl.float32)
    return tl.zeros(rows.shape, dtype=tl.float32)


# ---------------------------------------------------------------------------- the per-token rule
# A layout keeps entry (query i, key j) iff row i exists (i < q_len), key j exists (j < kv_len),
# with causal j <= i + kv_len - q_len (end-aligned: decoding queries see the whole prefix),
# token_mask[i, j] where there is a token mask, and scale * q_i . k_j >= row_threshold[i] where
# there is a row threshold. The torch definition is `kernels.layout.Layout.to_dense` (with
# `kernels.layout.causal_token_mask`); the helpers below compute the same rule on a tile. Indices
# broadcast: ``q_idx`` ``[M, 1]`` and ``k_idx`` ``[1, N]``, or transposed (the dK/dV kernel).
@triton.jit
def in_bounds(q_idx, k_idx, q_len, kv_len):
    """Row and key exist."""
    return (k_idx < kv_len) & (q_idx < q_len)


@triton.jit
def causal_visible(q_idx, k_idx, q_len, kv_len):
    """End-aligned causal mask: key ``k_idx`` is not after query ``q_idx``."""
    return k_idx <= q_idx + (kv_len - q_len)


@triton.jit
def visible(q_idx, k_idx, q_len, kv_len, CAUSAL: tl.constexpr):
    """Row and key exist and, with CAUSAL, the key is causally visible (dense attention)."""
    keep = in_bounds(q_idx, k_idx, q_len, kv_len)
    if CAUSAL:
        keep = keep & causal_visible(q_idx, k_idx, q_len, kv_len)
    return keep


@triton.jit
def layout_keeps(
    keep,
    q_idx,
    k_idx,
    qk,
    scale,
    threshold,
    token_mask,
    stride_tq,
    stride_tk,
    q_len,
    kv_len,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
):
    """The entries of ``keep`` that a layout's token-level fields keep: its causal flag, its token
    mask (read only where ``keep`` holds, at ``token_mask + q * stride_tq + k * stride_tk``) and
    its row ``threshold`` on the scaled score ``scale * qk``."""
    if CAUSAL:
        keep = keep & causal_visible(q_idx, k_idx, q_len, kv_len)
    if HAS_TOKEN_MASK:
        offsets = q_idx.to(tl.int64) * stride_tq + k_idx.to(tl.int64) * stride_tk
        keep = keep & (tl.load(token_mask + offsets, mask=keep, other=0) != 0)
    if HAS_THRESHOLD:
        keep = keep & (qk * scale >= threshold)
    return keep

"""What the Triton kernels share: the dtype table, input checks and autotune configurations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton

from kernels.dispatch import interpret_mode

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


def gpu_configs(shapes: Sequence[TileShape]) -> list[triton.Config]:
    """One configuration per ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``."""
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
        for m, n, warps, stages in shapes
    ]


def autotune_configs(shapes: Sequence[TileShape], *, interpreter_tile: int) -> list[triton.Config]:
    """`gpu_configs` of ``shapes``; under the interpreter a single configuration of
    ``interpreter_tile`` x ``interpreter_tile`` tiles (autotuning there is slow and pointless)."""
    if interpret_mode():
        config = {"BLOCK_M": interpreter_tile, "BLOCK_N": interpreter_tile}
        return [triton.Config(config, num_warps=1, num_stages=1)]
    return gpu_configs(shapes)


def tile_shape(config: triton.Config) -> TileShape:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of ``config``."""
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)

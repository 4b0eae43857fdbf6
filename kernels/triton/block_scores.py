"""Triton kernels for block-selection scores (same semantics as `kernels.reference`).

* `mean_pooled_block_scores`: a Triton kernel mean-pools each block of q and k in one read (fp32
  sums, partial edge blocks divided by their real row count); the product of the small pooled
  tensors (``n_blocks x d_head``) is a torch matmul.
* `antidiagonal_block_scores`: XAttention's strided antidiagonal scores. With stride S the strided
  score matrix is a plain matmul ``R = Q' K'^T`` with inner dimension ``S * d_head``, where
  ``Q'[m] = concat_t q[m*S + S-1-t]`` and ``K'[n] = concat_t k[n*S + t]``; the kernel accumulates it
  one ``t`` at a time from strided row loads, so neither the N x N score matrix nor the reshaped
  copies are built. One program owns ``BLOCK_M`` strided query rows (whole query blocks): a first
  pass over the key tiles finds each row's softmax max and normaliser, a second pass recomputes the
  tiles and adds the normalised probabilities into ``(block/S) x (block/S)`` regions.

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k: [batch, kv_heads, kv_len, d_head]``, query head
``h`` reads kv head ``h // (heads // kv_heads)``. Inputs fp16, bf16 or fp32; outputs float32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpret_mode
from kernels.layout import causal_block_mask, num_blocks
from kernels.reference import resolve_scale
from kernels.triton.common import block_d, check_qk, gpu_configs

POOL_TILE = 16384
"""Most elements the pooling kernel loads at once: it loads whole blocks where they fit, which pool
much faster than small row slices (`bench/NOTES.md`, "Mean pooling: rows per load")."""


# ---------------------------------------------------------------------------- input checks
def check_inputs(q: torch.Tensor, k: torch.Tensor) -> None:
    """Raise ``ValueError`` when q and k cannot go into the block-score kernels together."""
    check_qk(q, k)


# ---------------------------------------------------------------------------- mean pooling
@triton.jit
def _mean_pool_kernel(
    x_ptr,
    out_ptr,
    stride_xb,
    stride_xh,
    stride_xn,
    stride_xd,
    stride_ob,
    stride_oh,
    stride_on,
    heads,
    length,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per (block, batch * head): fp32 mean of the block's real rows."""
    block_id = tl.program_id(0)
    batch = (tl.program_id(1) // heads).to(tl.int64)
    head = (tl.program_id(1) % heads).to(tl.int64)
    x_base = x_ptr + batch * stride_xb + head * stride_xh
    dims = tl.arange(0, BLOCK_D)
    start = block_id.to(tl.int64) * BLOCK
    end = tl.minimum(start + BLOCK, length)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    for offset in range(0, BLOCK, ROWS):
        rows = start + offset + tl.arange(0, ROWS)
        keep = (rows < end)[:, None] & (dims < HEAD_DIM)[None, :]
        x = tl.load(
            x_base + rows[:, None] * stride_xn + dims[None, :] * stride_xd, mask=keep, other=0.0
        )
        total += tl.sum(x.to(tl.float32), 0)
    out = out_ptr + batch * stride_ob + head * stride_oh + block_id * stride_on
    tl.store(out + dims, total / (end - start).to(tl.float32), mask=dims < HEAD_DIM)


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """``[batch, heads, len, d]`` -> ``[batch, heads, n_blocks, d]`` float32 mean over each block's
    rows (a partial last block averages its real rows only)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    batch, heads, length, d_head = x.shape
    blocks = num_blocks(length, block)
    out = torch.empty(batch, heads, blocks, d_head, dtype=torch.float32, device=x.device)
    dim_tile = triton.next_power_of_2(d_head)
    rows = min(triton.next_power_of_2(block), max(POOL_TILE // dim_tile, 1))
    _mean_pool_kernel[(blocks, batch * heads)](
        x, out, *x.stride(), *out.stride()[:3], heads, length,
        HEAD_DIM=d_head, BLOCK=block, ROWS=rows, BLOCK_D=dim_tile, num_warps=4,
    )  # fmt: skip
    return out


def mean_pooled_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """``scale * mean_pool(q) . mean_pool(k)`` per (query block, key block):
    ``[batch, heads, n_q_blocks, n_kv_blocks]`` float32; with ``causal`` the blocks with no
    end-aligned causally visible entry are -inf. Same semantics as
    `kernels.reference.mean_pooled_block_scores`."""
    check_inputs(q, k)
    scale = resolve_scale(scale, q.shape[-1])
    heads, q_len = q.shape[1], q.shape[2]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    pooled_q = mean_pool(q, block_q)  # [b, h, n_q_blocks, d]
    pooled_k = mean_pool(k, block_k)  # [b, kv_heads, n_kv_blocks, d]
    # GQA without copies: group the query heads that share a kv head.
    grouped_q = pooled_q.unflatten(1, (kv_heads, heads // kv_heads))
    scores = (grouped_q @ pooled_k.unsqueeze(2).transpose(-1, -2)).flatten(1, 2) * scale
    if causal:
        visible = causal_block_mask(q_len, kv_len, block_q, block_k).to(q.device)
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores


# ---------------------------------------------------------------------------- antidiagonal
@triton.jit
def _strided_logits(
    q_base,
    k_base,
    tiles_m,
    tiles_n,
    stride_qn,
    stride_qd,
    stride_kn,
    stride_kd,
    q_len,
    kv_len,
    causal_offset,
    logit_scale,
    HEAD_DIM: tl.constexpr,
    STRIDE: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` base-2 logits ``logit_scale * sum_t q[m*S + S-1-t] . k[n*S + t]``
    of strided query rows ``tiles_m`` and key tiles ``tiles_n``. Rows past the sequence ends read
    as zeros (the reference's zero padding); -inf where the key tile holds no real key or, with
    CAUSAL, where ``n > m + causal_offset``."""
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(STRIDE):
        q_rows = tiles_m * STRIDE + (STRIDE - 1 - t)
        k_rows = tiles_n * STRIDE + t
        q = tl.load(
            q_base + q_rows[:, None] * stride_qn + dims[None, :] * stride_qd,
            mask=(q_rows < q_len)[:, None] & dim_ok[None, :],
            other=0.0,
        )
        k = tl.load(
            k_base + k_rows[None, :] * stride_kn + dims[:, None] * stride_kd,
            mask=(k_rows < kv_len)[None, :] & dim_ok[:, None],
            other=0.0,
        )
        acc = tl.dot(q, k, acc, input_precision=DOT_PRECISION)
    visible = (tiles_n * STRIDE < kv_len)[None, :]
    if CAUSAL:
        visible = visible & (tiles_n[None, :] <= tiles_m[:, None] + causal_offset)
    return tl.where(visible, acc * logit_scale, float("-inf"))


@triton.jit
def _antidiagonal_kernel(
    q_ptr,
    k_ptr,
    out_ptr,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_on,
    heads,
    group,
    q_len,
    kv_len,
    n_q_blocks,
    n_kv_blocks,
    causal_offset,
    logit_scale,
    length_bucket,  # autotune key only
    HEAD_DIM: tl.constexpr,
    STRIDE: tl.constexpr,
    PER_BLOCK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program per (BLOCK_M strided query rows, batch * head); writes the
    ``BLOCK_M / PER_BLOCK`` block rows it owns (blocks it never visits keep the caller's zeros)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # causal: longest rows start first
    batch = (tl.program_id(1) // heads).to(tl.int64)
    head = (tl.program_id(1) % heads).to(tl.int64)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + (head // group) * stride_kh
    tiles_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tile_end = tl.cdiv(kv_len, STRIDE)  # key tiles holding a real key
    if CAUSAL:  # last tile visible to the program's last row, at least 0
        tile_end = tl.maximum(tl.minimum(tile_end, pid_m * BLOCK_M + BLOCK_M + causal_offset), 0)

    # Pass 1: online row max and normaliser (base 2).
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, tile_end, BLOCK_N):
        tiles_n = start_n + tl.arange(0, BLOCK_N)
        logits = _strided_logits(
            q_base, k_base, tiles_m, tiles_n, stride_qn, stride_qd, stride_kn, stride_kd, q_len,
            kv_len, causal_offset, logit_scale, HEAD_DIM, STRIDE, CAUSAL, DOT_PRECISION,
            BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp2(row_max - safe_max)
        row_sum = row_sum * rescale + tl.sum(tl.exp2(logits - safe_max[:, None]), 1)
        row_max = new_max

    # Pass 2: normalised probabilities summed into (PER_BLOCK x PER_BLOCK) regions.
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    inverse_sum = 1.0 / tl.where(row_sum > 0, row_sum, 1.0)  # empty rows have probabilities 0
    # Strided query rows made only of padding carry no mass (as in XAttention).
    inverse_sum = tl.where(tiles_m * STRIDE < q_len, inverse_sum, 0.0)
    block_rows = pid_m * (BLOCK_M // PER_BLOCK) + tl.arange(0, BLOCK_M // PER_BLOCK)
    out_base = out_ptr + batch * stride_ob + head * stride_oh + block_rows[:, None] * stride_om
    for start_n in range(0, tile_end, BLOCK_N):
        tiles_n = start_n + tl.arange(0, BLOCK_N)
        logits = _strided_logits(
            q_base, k_base, tiles_m, tiles_n, stride_qn, stride_qd, stride_kn, stride_kd, q_len,
            kv_len, causal_offset, logit_scale, HEAD_DIM, STRIDE, CAUSAL, DOT_PRECISION,
            BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        probs = tl.exp2(logits - safe_max[:, None]) * inverse_sum[:, None]
        regions = tl.reshape(
            probs, (BLOCK_M // PER_BLOCK, PER_BLOCK, BLOCK_N // PER_BLOCK, PER_BLOCK)
        )
        block_sums = tl.sum(tl.sum(regions, 3), 1)
        block_cols = start_n // PER_BLOCK + tl.arange(0, BLOCK_N // PER_BLOCK)
        keep = (block_rows < n_q_blocks)[:, None] & (block_cols < n_kv_blocks)[None, :]
        tl.store(out_base + block_cols[None, :] * stride_on, block_sums, mask=keep)


FP32_MAX_BLOCK_N = 64
"""fp32 inputs skip key tiles wider than this where the blocks allow: at 128 the kernel compiles
(ptxas, sm_90) with 3-4 KB of stack per thread, which the driver reserves for every thread the GPU
can hold (~1 GB of device memory per process); at 64, under 1 KB."""


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the configs whose tiles hold whole blocks (edges multiples of PER_BLOCK); for fp32
    inputs, of those, the ones with key tiles of at most `FP32_MAX_BLOCK_N` if any."""
    args = {**named_args, **kwargs}
    per_block = args["PER_BLOCK"]
    kept = [c for c in configs if min(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) >= per_block]
    if args["q_ptr"].dtype == torch.float32:
        kept = [c for c in kept if c.kwargs["BLOCK_N"] <= FP32_MAX_BLOCK_N] or kept
    return kept or [triton.Config({"BLOCK_M": per_block, "BLOCK_N": per_block}, num_warps=8)]


_GPU_CONFIGS = gpu_configs([
    (64, 64, 4, 2), (64, 128, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3),
    (128, 128, 8, 3),
])  # fmt: skip
_antidiagonal_autotuned = triton.autotune(
    _GPU_CONFIGS,
    key=["length_bucket", "HEAD_DIM", "STRIDE", "PER_BLOCK", "CAUSAL", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_antidiagonal_kernel)


def antidiagonal_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block: int,
    stride: int,
    scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """XAttention block scores ``[batch, heads, n_blocks_q, n_blocks_k]`` float32.

    Same semantics as `kernels.reference.antidiagonal_block_scores`: strided scores
    ``R[m, n] = sum_{t<S} q[m*S + S-1-t] . k[n*S + t] * scale / S`` (S = ``stride``), key tiles
    past ``kv_len`` excluded, causal at stride resolution (tile (m, n) visible iff
    ``n <= m + (kv_len - q_len) // S``), softmax along each row of R, then sums over
    ``(block/S) x (block/S)`` regions. ``block / stride`` must be a power of two.
    """
    check_inputs(q, k)
    per_block = block // stride if stride >= 1 and block % stride == 0 else 0
    if per_block < 1 or per_block & (per_block - 1):
        raise ValueError(
            f"block / stride must be a power of two, got block={block}, stride={stride}"
        )
    scale = resolve_scale(scale, q.shape[-1])
    batch, heads, q_len, d_head = q.shape
    kv_len = k.shape[2]
    n_q_blocks, n_kv_blocks = num_blocks(q_len, block), num_blocks(kv_len, block)
    out = torch.zeros(batch, heads, n_q_blocks, n_kv_blocks, dtype=torch.float32, device=q.device)
    arguments = (
        q, k, out, *q.stride(), *k.stride(), *out.stride(), heads, heads // k.shape[1], q_len,
        kv_len, n_q_blocks, n_kv_blocks, (kv_len - q_len) // stride,
        scale / stride * math.log2(math.e), triton.next_power_of_2(max(q_len, kv_len)),
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=d_head, STRIDE=stride, PER_BLOCK=per_block, CAUSAL=causal,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_D=block_d(d_head),
    )  # fmt: skip

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(n_q_blocks * per_block, config["BLOCK_M"]), batch * heads)

    if interpret_mode():
        tile = max(per_block, 64)
        _antidiagonal_kernel[grid({"BLOCK_M": tile})](
            *arguments, **meta, BLOCK_M=tile, BLOCK_N=tile
        )
    else:
        _antidiagonal_autotuned[grid](*arguments, **meta)
    return out

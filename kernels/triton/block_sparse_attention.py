"""Block-sparse flash attention over a `kernels.layout.Layout`: forward and backward kernels.

Same function as `kernels.reference.attention` (the oracle), FlashAttention-2 style:

* **forward** (`_fwd_kernel`): one program per ``BLOCK_M`` query rows of one (batch, head). It walks
  the key blocks its query block lists (``kv_indices``), each in ``block_k // BLOCK_N`` tiles, with
  an online softmax in fp32 and base-2 exponentials (``scale * log2(e)`` folded into the scores).
  It writes the output in the input dtype and the row logsumexp (natural log, fp32).
* **backward**: `_delta_kernel` computes ``delta = rowsum(dO * O)`` (less the logsumexp's gradient
  when it has one); `_dq_kernel` walks the same key tiles as the forward and accumulates dQ;
  `_dkdv_kernel` owns ``BLOCK_N`` key rows of one kv head and walks the query blocks that list the
  key block (``layout.transpose()``), recomputing the probabilities from the saved logsumexp. With
  grouped-query attention a dK/dV program loops over the query heads of its group and accumulates
  their contributions in fp32 registers, so dK/dV are written once, with no atomics and no per-
  query-head buffer.

Masking: a tile is masked (`_mask_scores`) only when it may drop an entry: when it crosses the end of
the keys or the causal diagonal, and on every tile when the layout has a ``token_mask`` or a
``row_threshold``; interior tiles skip the mask arithmetic. With ``causal`` the tiles that lie
wholly beyond the diagonal are not visited (`_key_steps`, `_query_start`). A row that keeps no key
gets output 0, logsumexp -inf and zero gradients.

Variants (chosen by `kernels.triton.variants`): tiles load through pointers, or with
``DESCRIPTORS`` through device-side tensor descriptors (`kernels.triton.common.tile_source`: TMA
loads on Hopper). The kernels can run warp-specialised (``WARP_SPECIALIZE``: Triton runs the key
loop as a load partition beside compute warpgroups; it does so only for a loop body without
run-time branches, so such configurations mask every tile, and only in a kernel without ``while``
loops, `_key_steps`), but no kernel offers such a configuration at present: the forward's gave
wrong outputs on an H100 with Triton 3.6 (`_FWD_WS_CONFIGS`). With ``PERSISTENT`` the forward runs
a grid of a few programs per multiprocessor that walk a work list of (batch, head, query block)
items, longest first, instead of one program per query tile.

Tiles ``BLOCK_M`` x ``BLOCK_N`` divide the layout's ``block_q`` x ``block_k``; the head dimension is
padded to a power of two (at least 16) by masks on the d axis. Inputs fp16, bf16 or fp32; dots run
in the input dtype with fp32 accumulation (fp32 dots use TF32 on the GPU only when
``torch.backends.cuda.matmul.allow_tf32`` is set). Every tensor is addressed through its strides,
so non-contiguous views (e.g. ``[batch, len, heads, d]`` transposed) need no copy.

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k, v: [batch, kv_heads, kv_len, d_head]``; query
head ``h`` reads kv head ``h // (heads // kv_heads)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpret_mode
from kernels.layout import Layout
from kernels.triton import variants
from kernels.triton.common import (
    MIN_DOT,
    TileShape,
    autotune_configs,
    block_d,
    check_d_head,
    check_dtypes,
    gpu_configs,
    in_bounds,
    layout_keeps,
    load_rows,
    load_threshold,
    load_tile,
    store_rows,
    tile_source,
)
from kernels.triton.variants import Variant

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, for the GPU. Configurations whose tiles do
# not divide the layout's blocks are pruned; the small ones serve layouts of small blocks.
_FWD_CONFIGS = [
    (128, 128, 8, 3),
    (128, 64, 8, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 4),
    (32, 32, 4, 2),
    (16, 16, 2, 2),
]
_DQ_CONFIGS = [
    (128, 128, 8, 2),
    (128, 64, 8, 3),
    (128, 32, 4, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 4),
    (32, 32, 4, 2),
    (16, 16, 2, 2),
]
# dK/dV: BLOCK_N key rows per program, BLOCK_M query rows per step.
_DKDV_CONFIGS = [
    (64, 128, 8, 3),
    (32, 128, 8, 3),
    (32, 64, 4, 4),
    (32, 32, 4, 2),
    (16, 16, 2, 2),
]
# Tensor-descriptor loads (TMA on Hopper): software-pipelined configurations; warp-specialised
# ones (num_warps 4: Triton splits the loop into a load partition and compute warpgroups) where
# they compute the right thing. Configurations that spill on sm_90 (bench/compile_check.py,
# bench/NOTES.md) are left out.
# The forward's warp-specialised (128, 128, 4, 2) / (128, 64, 4, 3) gave relative errors of
# 0.44-0.68 on an H100 (Triton 3.6) at 4K and 16K tokens while the same kernel with the other
# configurations was right (bench/NOTES.md, "Warp-specialised forward: wrong on the GPU"); they
# return when `python bench/config_check.py --warp-specialised` passes them on the GPU.
WITHDRAWN_FWD_WS_SHAPES: list[TileShape] = [(128, 128, 4, 2), (128, 64, 4, 3)]
_FWD_WS_CONFIGS: list[TileShape] = []
_FWD_TMA_CONFIGS = [(128, 128, 8, 3), (128, 64, 8, 3)]
_DQ_TMA_CONFIGS = [(128, 128, 8, 2), (128, 64, 8, 3)]
_DKDV_TMA_CONFIGS = [(32, 128, 8, 3), (32, 64, 4, 4)]
_DQ_WS_CONFIGS: list[TileShape] = []  # Triton 3.6's Hopper pass asserts on this loop
_DKDV_WS_CONFIGS: list[TileShape] = []  # its query walk holds a `while`
_AUTOTUNE_KEY = ["D_HEAD", "BLOCK_Q", "BLOCK_K", "CAUSAL", "DESCRIPTORS"]


FP32_MAX_TILE = 32
"""fp32 inputs use tiles of at most 32 x 32: larger fp32 tiles compile (ptxas, sm_90) to kernels
holding 6-13 KB of stack per thread, and the driver reserves the stack of every thread the GPU can
hold (~3 GB of device memory per process, for as long as it lives) as soon as one of them runs,
e.g. while autotuning."""


def _fitting(configs: list[triton.Config], args: dict) -> list[triton.Config]:
    """The configurations whose tiles divide the layout's blocks (and, for fp32 inputs, are at
    most `FP32_MAX_TILE`); of those, drop tiles smaller than ``min(block, 32)`` when larger ones
    remain (small tiles serve layouts of small blocks)."""
    block_q, block_k = args["BLOCK_Q"], args["BLOCK_K"]
    if args["Q"].dtype == torch.float32:
        block_q, block_k = min(block_q, FP32_MAX_TILE), min(block_k, FP32_MAX_TILE)
    fits = [
        config
        for config in configs
        if config.kwargs["BLOCK_M"] <= block_q and config.kwargs["BLOCK_N"] <= block_k
    ]
    large = [
        config
        for config in fits
        if config.kwargs["BLOCK_M"] >= min(block_q, 32)
        and config.kwargs["BLOCK_N"] >= min(block_k, 32)
    ]
    return large or fits


def _autotune(
    pointer_shapes: list[TileShape],
    descriptor_shapes: list[TileShape],
    warp_specialized_shapes: list[TileShape],
    key: list[str] = _AUTOTUNE_KEY,
):
    """Autotuner over ``pointer_shapes`` for pointer loads, and over ``descriptor_shapes`` and
    ``warp_specialized_shapes`` (``WARP_SPECIALIZE``; not in a persistent grid) for descriptor
    loads; a launch tries those that fit its layout's blocks (`_fitting`), the pointer ones when no
    descriptor one does (fp32).
    Under the interpreter a single configuration of 16 x 16 tiles, which divide every layout block
    (Triton 3.6's autotuner benchmarks whenever it holds several); ``WARP_SPECIALIZE`` is then an
    argument of the launch (`_interpreter_flags`)."""
    if interpret_mode():
        return triton.autotune(configs=autotune_configs([], interpreter_tile=MIN_DOT), key=key)
    pointer = gpu_configs(pointer_shapes, WARP_SPECIALIZE=False)
    descriptor = gpu_configs(descriptor_shapes, WARP_SPECIALIZE=False) + gpu_configs(
        warp_specialized_shapes, WARP_SPECIALIZE=True
    )

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        args = {**named_args, **kwargs}
        chosen = _fitting(descriptor, args) if args["DESCRIPTORS"] else []
        if args.get("PERSISTENT"):  # the Hopper pass fails on the nested loops
            chosen = [config for config in chosen if not config.kwargs["WARP_SPECIALIZE"]]
        return chosen or _fitting(pointer, args)

    return triton.autotune(
        configs=pointer + descriptor,
        key=key,
        prune_configs_by={"early_config_prune": prune},
    )


def _interpreter_flags(descriptors: bool, warp_specialized_shapes: list[TileShape]) -> dict:
    """``WARP_SPECIALIZE`` for a launch under the interpreter (elsewhere the configuration sets
    it): the branch-free loop body of the warp-specialised configurations with descriptor loads
    where the kernel has such configurations, so that the tests run it."""
    if not interpret_mode():
        return {}
    return {"WARP_SPECIALIZE": descriptors and bool(warp_specialized_shapes)}


# ---------------------------------------------------------------------------- jit helpers
@triton.jit
def _load_backward_stats(lse_ptr, delta_ptr, rows, q_len):
    """Row logsumexp in base 2 (+inf for empty and out-of-range rows, so that their
    probabilities ``exp2(s - lse)`` are 0) and ``delta = rowsum(dO * O)``."""
    lse = tl.load(lse_ptr + rows, mask=rows < q_len, other=float("-inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    return lse, tl.load(delta_ptr + rows, mask=rows < q_len, other=0.0)


@triton.jit
def _tile_start(indices, stride_entry, step, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """First position of walking step ``step``: tile ``step % (BLOCK // TILE)`` of the listed
    block ``indices[step // (BLOCK // TILE)]``."""
    block = tl.load(indices + (step // (BLOCK // TILE)) * stride_entry)
    return tl.multiple_of(block * BLOCK + (step % (BLOCK // TILE)) * TILE, TILE)


@triton.jit
def _key_steps(
    indices,
    stride_entry,
    count,
    m0,
    q_len,
    kv_len,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Number of key tiles that query rows ``[m0, m0 + BLOCK_M)`` walk: ``count`` listed blocks of
    ``BLOCK_K // BLOCK_N`` tiles; with CAUSAL the trailing listed blocks that lie wholly after the
    rows' last visible key are dropped, and the tiles past it in the last block kept.

    The listed blocks increase and the layout constructors list no block wholly after its query
    block's last key, so at most ``BLOCK_Q // BLOCK_K`` trailing blocks can lie after the tile's:
    a loop of that many steps (no ``while``: Triton's warp specialisation rejects kernels holding
    one) finds them. A block of a hand-made layout lying farther back is walked and masked."""
    steps = count * (BLOCK_K // BLOCK_N)
    if CAUSAL:
        last_key = tl.minimum(m0 + BLOCK_M, q_len) - 1 + (kv_len - q_len)
        listed = count
        for _ in range(0, BLOCK_Q // BLOCK_K + 1):
            block = tl.load(indices + (listed - 1) * stride_entry, mask=listed > 0, other=0)
            listed = tl.where((listed > 0) & (block * BLOCK_K > last_key), listed - 1, listed)
        block = tl.load(indices + (listed - 1) * stride_entry, mask=listed > 0, other=0)
        tiles_in_last = tl.minimum((last_key - block * BLOCK_K) // BLOCK_N + 1, BLOCK_K // BLOCK_N)
        tiles_in_last = tl.maximum(tiles_in_last, 0)
        steps = tl.where(listed > 0, (listed - 1) * (BLOCK_K // BLOCK_N) + tiles_in_last, 0)
    return steps


@triton.jit
def _query_start(
    indices,
    stride_entry,
    count,
    n0,
    q_len,
    kv_len,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """First query tile step for key rows ``[n0, n0 + BLOCK_N)``: 0, or with CAUSAL the first tile
    holding a query that sees key ``n0`` (listed query blocks increase). A start at or past
    ``count * (BLOCK_Q // BLOCK_M)`` means no tile is visible."""
    start = count * 0
    if CAUSAL:
        first_query = n0 - (kv_len - q_len)
        listed = count * 0
        block = tl.load(indices, mask=count > 0, other=0)
        while (listed < count) & ((block + 1) * BLOCK_Q <= first_query):
            listed += 1
            block = tl.load(indices + listed * stride_entry, mask=listed < count, other=0)
        skipped = tl.maximum(first_query - block * BLOCK_Q, 0) // BLOCK_M
        start = listed * (BLOCK_Q // BLOCK_M) + skipped
    return start


@triton.jit
def _mask_scores(
    qk,
    q_idx,
    k_idx,
    threshold,
    token_mask,
    stride_tq,
    stride_tk,
    q_len,
    kv_len,
    scale,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
):
    """``qk`` with -inf on the entries the layout drops (see `_layout_scores`)."""
    keep = layout_keeps(
        in_bounds(q_idx, k_idx, q_len, kv_len),
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
        CAUSAL,
        HAS_TOKEN_MASK,
        HAS_THRESHOLD,
    )
    return tl.where(keep, qk, float("-inf"))


@triton.jit
def _layout_scores(
    qk,
    q_idx,
    k_idx,
    threshold,
    m0,
    n0,
    token_mask,
    stride_tq,
    stride_tk,
    q_len,
    kv_len,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    EVERY_TILE: tl.constexpr = False,
):
    """Unscaled scores ``qk = q . k`` of the tile queries ``[m0, m0 + BLOCK_M)`` x keys
    ``[n0, n0 + BLOCK_N)`` with -inf where the layout drops the entry.

    ``q_idx`` and ``k_idx`` are the query and key positions shaped to broadcast to ``qk`` (``[M, 1]``
    and ``[1, N]``, or transposed for the dK/dV kernel); ``threshold`` broadcasts like ``q_idx``.
    Tiles inside the keys and (with CAUSAL) wholly below the diagonal skip the mask when the layout
    has no token-level fields, unless EVERY_TILE asks for a branch-free loop body (warp
    specialisation); rows past ``q_len`` are never stored (forward, dQ) or carry zero
    probability (dK/dV), so they need no mask either.
    """
    if HAS_TOKEN_MASK | HAS_THRESHOLD | EVERY_TILE:
        qk = _mask_scores(
            qk,
            q_idx,
            k_idx,
            threshold,
            token_mask,
            stride_tq,
            stride_tk,
            q_len,
            kv_len,
            scale,
            CAUSAL,
            HAS_TOKEN_MASK,
            HAS_THRESHOLD,
        )
    else:
        edge = n0 + BLOCK_N > kv_len
        if CAUSAL:
            edge = edge | (n0 + BLOCK_N - 1 > m0 + (kv_len - q_len))
        if edge:
            qk = _mask_scores(
                qk,
                q_idx,
                k_idx,
                threshold,
                token_mask,
                stride_tq,
                stride_tk,
                q_len,
                kv_len,
                scale,
                CAUSAL,
                HAS_TOKEN_MASK,
                HAS_THRESHOLD,
            )
    return qk


@triton.jit
def _query_tile_start(BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """First query row of the program's tile (grid axis 0); with CAUSAL the last tiles, whose rows
    see the most keys, run first, which shortens the grid's tail."""
    tile = tl.program_id(0)
    if CAUSAL:
        tile = tl.num_programs(0) - 1 - tile
    return tile * BLOCK_M


@triton.jit
def _check_tiles(
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16, "tl.dot needs tiles of at least 16 rows")
    tl.static_assert(BLOCK_N >= 16, "tl.dot needs tiles of at least 16 columns")
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs an inner dimension of at least 16")
    tl.static_assert(BLOCK_Q % BLOCK_M == 0, "BLOCK_M must divide the layout's block_q")
    tl.static_assert(BLOCK_K % BLOCK_N == 0, "BLOCK_N must divide the layout's block_k")


# ---------------------------------------------------------------------------- forward
@triton.jit
def _fwd_rows(
    Q,
    K,
    V,
    Out,
    Lse,
    KvIndices,
    KvCounts,
    TokenMask,
    Threshold,
    pid_bh,
    m0,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_ib,
    stride_ih,
    stride_ir,
    stride_ie,
    stride_cb,
    stride_ch,
    stride_cr,
    stride_tb,
    stride_th,
    stride_tq,
    stride_tk,
    stride_rb,
    stride_rh,
    stride_rq,
    heads,
    group,
    q_len,
    kv_len,
    scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """Output and logsumexp of query rows ``[m0, m0 + BLOCK_M)`` of ``pid_bh = b * heads + h``.
    With WARP_SPECIALIZE the key loop is warp-specialised (loads in a producer partition), which
    Triton does only for a loop body without branches: every tile is masked then."""
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    q_src = tile_source(
        Q + b * stride_qb + h * stride_qh, q_len, stride_qm, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS
    )
    k_src = tile_source(
        K + b * stride_kb + (h // group) * stride_kh,
        kv_len,
        stride_kn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    v_src = tile_source(
        V + b * stride_vb + (h // group) * stride_vh,
        kv_len,
        stride_vn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    q = load_tile(q_src, m0, stride_qm, stride_qd, q_len, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS)
    indices = KvIndices + b * stride_ib + h * stride_ih + (m0 // BLOCK_Q) * stride_ir
    count = tl.load(KvCounts + b * stride_cb + h * stride_ch + (m0 // BLOCK_Q) * stride_cr)
    token_mask = TokenMask + b * stride_tb + h * stride_th
    threshold = load_threshold(
        Threshold + b * stride_rb + h * stride_rh, rows, stride_rq, q_len, HAS_THRESHOLD
    )
    qk_scale = scale * 1.4426950408889634

    # A finite start: rows with no kept key yet subtract it from -inf scores (exp2 -> 0), no NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    steps = _key_steps(
        indices, stride_ie, count, m0, q_len, kv_len, BLOCK_M, BLOCK_Q, BLOCK_K, BLOCK_N, CAUSAL
    )
    for step in tl.range(0, steps, warp_specialize=WARP_SPECIALIZE):
        n0 = _tile_start(indices, stride_ie, step, BLOCK_K, BLOCK_N)
        k = load_tile(
            k_src, n0, stride_kn, stride_kd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS
        )
        v = load_tile(
            v_src, n0, stride_vn, stride_vd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS
        )
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        keys = n0 + tl.arange(0, BLOCK_N)
        qk = _layout_scores(
            qk,
            rows[:, None],
            keys[None, :],
            threshold[:, None],
            m0,
            n0,
            token_mask,
            stride_tq,
            stride_tk,
            q_len,
            kv_len,
            scale,
            BLOCK_M,
            BLOCK_N,
            CAUSAL,
            HAS_TOKEN_MASK,
            HAS_THRESHOLD,
            WARP_SPECIALIZE,
        )
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # qk_scale > 0
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # one FMA per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc=acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    nonempty = l_i > 0.0
    l_i = tl.where(nonempty, l_i, 1.0)
    acc = acc / l_i[:, None]
    store_rows(
        Out + b * stride_ob + h * stride_oh,
        acc,
        rows,
        stride_om,
        cols,
        stride_od,
        q_len,
        D_HEAD,
        BLOCK_D,
    )
    lse = tl.where(nonempty, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, float("-inf"))
    tl.store(Lse + pid_bh.to(tl.int64) * q_len + rows, lse, mask=rows < q_len)


@_autotune(_FWD_CONFIGS, _FWD_TMA_CONFIGS, _FWD_WS_CONFIGS, [*_AUTOTUNE_KEY, "PERSISTENT"])
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    Lse,
    KvIndices,
    KvCounts,
    TokenMask,
    Threshold,
    WorkList,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_ib,
    stride_ih,
    stride_ir,
    stride_ie,
    stride_cb,
    stride_ch,
    stride_cr,
    stride_tb,
    stride_th,
    stride_tq,
    stride_tk,
    stride_rb,
    stride_rh,
    stride_rq,
    heads,
    group,
    q_len,
    kv_len,
    n_items,
    scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
    PERSISTENT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``, one program per query tile; with
    PERSISTENT a grid ``(programs,)`` whose program ``i`` takes the work items ``i, i + programs,
    ...`` of ``WorkList`` (``[n_items]`` int32 ``pid_bh * n_q_blocks + query block``, longest
    first) and walks every ``BLOCK_M`` tile of each item's query block."""
    _check_tiles(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_Q, BLOCK_K)
    if PERSISTENT:
        n_q_blocks = tl.cdiv(q_len, BLOCK_Q)
        for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
            work = tl.load(WorkList + item)
            block_start = (work % n_q_blocks) * BLOCK_Q
            for m0 in range(block_start, tl.minimum(block_start + BLOCK_Q, q_len), BLOCK_M):
                _fwd_rows(
                    Q, K, V, Out, Lse, KvIndices, KvCounts, TokenMask, Threshold,
                    work // n_q_blocks, m0,
                    stride_qb, stride_qh, stride_qm, stride_qd,
                    stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_ib, stride_ih, stride_ir, stride_ie,
                    stride_cb, stride_ch, stride_cr,
                    stride_tb, stride_th, stride_tq, stride_tk,
                    stride_rb, stride_rh, stride_rq,
                    heads, group, q_len, kv_len, scale,
                    D_HEAD, BLOCK_D, BLOCK_Q, BLOCK_K, CAUSAL, HAS_TOKEN_MASK, HAS_THRESHOLD,
                    PRECISION, DESCRIPTORS, BLOCK_M, BLOCK_N, WARP_SPECIALIZE,
                )  # fmt: skip
    else:
        _fwd_rows(
            Q, K, V, Out, Lse, KvIndices, KvCounts, TokenMask, Threshold,
            tl.program_id(1), _query_tile_start(BLOCK_M, CAUSAL),
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_ob, stride_oh, stride_om, stride_od,
            stride_ib, stride_ih, stride_ir, stride_ie,
            stride_cb, stride_ch, stride_cr,
            stride_tb, stride_th, stride_tq, stride_tk,
            stride_rb, stride_rh, stride_rq,
            heads, group, q_len, kv_len, scale,
            D_HEAD, BLOCK_D, BLOCK_Q, BLOCK_K, CAUSAL, HAS_TOKEN_MASK, HAS_THRESHOLD,
            PRECISION, DESCRIPTORS, BLOCK_M, BLOCK_N, WARP_SPECIALIZE,
        )  # fmt: skip


# ---------------------------------------------------------------------------- backward
@triton.jit
def _delta_kernel(
    Out,
    GradOut,
    Delta,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    heads,
    q_len,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``delta = rowsum(dO * O)`` in fp32, ``[batch, heads, q_len]`` contiguous.
    Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    out = load_rows(
        Out + b * stride_ob + h * stride_oh,
        rows,
        stride_om,
        cols,
        stride_od,
        q_len,
        D_HEAD,
        BLOCK_D,
    )
    grad = load_rows(
        GradOut + b * stride_gb + h * stride_gh,
        rows,
        stride_gm,
        cols,
        stride_gd,
        q_len,
        D_HEAD,
        BLOCK_D,
    )
    delta = tl.sum(out.to(tl.float32) * grad.to(tl.float32), 1)
    tl.store(Delta + pid_bh.to(tl.int64) * q_len + rows, delta, mask=rows < q_len)


@_autotune(_DQ_CONFIGS, _DQ_TMA_CONFIGS, _DQ_WS_CONFIGS)
@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    GradOut,
    Lse,
    Delta,
    GradQ,
    KvIndices,
    KvCounts,
    TokenMask,
    Threshold,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    stride_ib,
    stride_ih,
    stride_ir,
    stride_ie,
    stride_cb,
    stride_ch,
    stride_cr,
    stride_tb,
    stride_th,
    stride_tq,
    stride_tk,
    stride_rb,
    stride_rh,
    stride_rq,
    heads,
    group,
    q_len,
    kv_len,
    scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """dQ of ``BLOCK_M`` query rows over the key tiles the forward walked.
    Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``."""
    _check_tiles(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_Q, BLOCK_K)
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    m0 = _query_tile_start(BLOCK_M, CAUSAL)
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    q_src = tile_source(
        Q + b * stride_qb + h * stride_qh, q_len, stride_qm, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS
    )
    g_src = tile_source(
        GradOut + b * stride_gb + h * stride_gh,
        q_len,
        stride_gm,
        D_HEAD,
        BLOCK_M,
        BLOCK_D,
        DESCRIPTORS,
    )
    k_src = tile_source(
        K + b * stride_kb + (h // group) * stride_kh,
        kv_len,
        stride_kn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    v_src = tile_source(
        V + b * stride_vb + (h // group) * stride_vh,
        kv_len,
        stride_vn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    q = load_tile(q_src, m0, stride_qm, stride_qd, q_len, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS)
    grad_out = load_tile(
        g_src, m0, stride_gm, stride_gd, q_len, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS
    )
    lse, delta = _load_backward_stats(
        Lse + pid_bh.to(tl.int64) * q_len, Delta + pid_bh.to(tl.int64) * q_len, rows, q_len
    )
    indices = KvIndices + b * stride_ib + h * stride_ih + (m0 // BLOCK_Q) * stride_ir
    count = tl.load(KvCounts + b * stride_cb + h * stride_ch + (m0 // BLOCK_Q) * stride_cr)
    token_mask = TokenMask + b * stride_tb + h * stride_th
    threshold = load_threshold(
        Threshold + b * stride_rb + h * stride_rh, rows, stride_rq, q_len, HAS_THRESHOLD
    )
    qk_scale = scale * 1.4426950408889634

    grad_q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    steps = _key_steps(
        indices, stride_ie, count, m0, q_len, kv_len, BLOCK_M, BLOCK_Q, BLOCK_K, BLOCK_N, CAUSAL
    )
    for step in tl.range(0, steps, warp_specialize=WARP_SPECIALIZE):
        n0 = _tile_start(indices, stride_ie, step, BLOCK_K, BLOCK_N)
        keys = n0 + tl.arange(0, BLOCK_N)
        k = load_tile(
            k_src, n0, stride_kn, stride_kd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS
        )
        v = load_tile(
            v_src, n0, stride_vn, stride_vd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS
        )
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        qk = _layout_scores(
            qk,
            rows[:, None],
            keys[None, :],
            threshold[:, None],
            m0,
            n0,
            token_mask,
            stride_tq,
            stride_tk,
            q_len,
            kv_len,
            scale,
            BLOCK_M,
            BLOCK_N,
            CAUSAL,
            HAS_TOKEN_MASK,
            HAS_THRESHOLD,
            WARP_SPECIALIZE,
        )
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        dp = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        grad_q = tl.dot(ds.to(k.dtype), k, acc=grad_q, input_precision=PRECISION)

    store_rows(
        GradQ + b * stride_dqb + h * stride_dqh,
        grad_q * scale,
        rows,
        stride_dqm,
        cols,
        stride_dqd,
        q_len,
        D_HEAD,
        BLOCK_D,
    )


@_autotune(_DKDV_CONFIGS, _DKDV_TMA_CONFIGS, _DKDV_WS_CONFIGS)
@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    GradOut,
    Lse,
    Delta,
    GradK,
    GradV,
    QIndices,
    QCounts,
    TokenMask,
    Threshold,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_gb,
    stride_gh,
    stride_gm,
    stride_gd,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    stride_ib,
    stride_ih,
    stride_ir,
    stride_ie,
    stride_cb,
    stride_ch,
    stride_cr,
    stride_tb,
    stride_th,
    stride_tq,
    stride_tk,
    stride_rb,
    stride_rh,
    stride_rq,
    heads,
    group,
    q_len,
    kv_len,
    scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """dK and dV of ``BLOCK_N`` key rows of one kv head, summed over the ``group`` query heads that
    read it and the query tiles that list the key block (``QIndices``/``QCounts``: the layout's
    column view). Grid ``(cdiv(kv_len, BLOCK_N), batch * kv_heads)``."""
    _check_tiles(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_Q, BLOCK_K)
    pid_bh = tl.program_id(1)
    b = (pid_bh // (heads // group)).to(tl.int64)
    kv_h = (pid_bh % (heads // group)).to(tl.int64)
    n0 = tl.program_id(0) * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    k_src = tile_source(
        K + b * stride_kb + kv_h * stride_kh,
        kv_len,
        stride_kn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    v_src = tile_source(
        V + b * stride_vb + kv_h * stride_vh,
        kv_len,
        stride_vn,
        D_HEAD,
        BLOCK_N,
        BLOCK_D,
        DESCRIPTORS,
    )
    k = load_tile(k_src, n0, stride_kn, stride_kd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS)
    v = load_tile(v_src, n0, stride_vn, stride_vd, kv_len, D_HEAD, BLOCK_N, BLOCK_D, DESCRIPTORS)
    qk_scale = scale * 1.4426950408889634

    grad_k = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    grad_v = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(0, group):
        h = kv_h * group + g
        q_src = tile_source(
            Q + b * stride_qb + h * stride_qh,
            q_len,
            stride_qm,
            D_HEAD,
            BLOCK_M,
            BLOCK_D,
            DESCRIPTORS,
        )
        g_src = tile_source(
            GradOut + b * stride_gb + h * stride_gh,
            q_len,
            stride_gm,
            D_HEAD,
            BLOCK_M,
            BLOCK_D,
            DESCRIPTORS,
        )
        lse_ptr = Lse + (b * heads + h) * q_len
        delta_ptr = Delta + (b * heads + h) * q_len
        indices = QIndices + b * stride_ib + h * stride_ih + (n0 // BLOCK_K) * stride_ir
        count = tl.load(QCounts + b * stride_cb + h * stride_ch + (n0 // BLOCK_K) * stride_cr)
        token_mask = TokenMask + b * stride_tb + h * stride_th
        threshold_ptr = Threshold + b * stride_rb + h * stride_rh
        start = _query_start(indices, stride_ie, count, n0, q_len, kv_len, BLOCK_Q, BLOCK_M, CAUSAL)
        steps = count * (BLOCK_Q // BLOCK_M)
        for step in tl.range(start, steps, warp_specialize=WARP_SPECIALIZE):
            m0 = _tile_start(indices, stride_ie, step, BLOCK_Q, BLOCK_M)
            rows = m0 + tl.arange(0, BLOCK_M)
            q = load_tile(
                q_src, m0, stride_qm, stride_qd, q_len, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS
            )
            grad_out = load_tile(
                g_src, m0, stride_gm, stride_gd, q_len, D_HEAD, BLOCK_M, BLOCK_D, DESCRIPTORS
            )
            lse, delta = _load_backward_stats(lse_ptr, delta_ptr, rows, q_len)
            threshold = load_threshold(threshold_ptr, rows, stride_rq, q_len, HAS_THRESHOLD)
            qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
            qk_t = _layout_scores(
                qk_t,
                rows[None, :],
                keys[:, None],
                threshold[None, :],
                m0,
                n0,
                token_mask,
                stride_tq,
                stride_tk,
                q_len,
                kv_len,
                scale,
                BLOCK_M,
                BLOCK_N,
                CAUSAL,
                HAS_TOKEN_MASK,
                HAS_THRESHOLD,
                WARP_SPECIALIZE,
            )
            p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
            grad_v = tl.dot(p_t.to(grad_out.dtype), grad_out, acc=grad_v, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            grad_k = tl.dot(ds_t.to(q.dtype), q, acc=grad_k, input_precision=PRECISION)

    store_rows(
        GradK + b * stride_dkb + kv_h * stride_dkh,
        grad_k * scale,
        keys,
        stride_dkn,
        cols,
        stride_dkd,
        kv_len,
        D_HEAD,
        BLOCK_D,
    )
    store_rows(
        GradV + b * stride_dvb + kv_h * stride_dvh,
        grad_v,
        keys,
        stride_dvn,
        cols,
        stride_dvd,
        kv_len,
        D_HEAD,
        BLOCK_D,
    )


# ---------------------------------------------------------------------------- tuning
def _autotuners() -> dict[str, triton.runtime.Autotuner]:
    return {"forward": _fwd_kernel, "dq": _dq_kernel, "dkdv": _dkdv_kernel}


def tuned_configs() -> dict[str, dict[str, str]]:
    """Per autotuned kernel (``"forward"``, ``"dq"``, ``"dkdv"``), the configuration its autotuner
    chose for each tuning key so far in this process, as strings (``key -> config``); an
    autotuner of one configuration (the interpreter's) never tunes and gives it as ``"single"``.
    A key holds the head size, the layout's block sizes, causality and the loads
    (`_AUTOTUNE_KEY`) and the arguments' dtypes, not the layout's density: the first layout of a
    key decides for the rest."""
    tuned = {}
    for name, tuner in _autotuners().items():
        if len(tuner.configs) == 1:
            tuned[name] = {"single": str(tuner.configs[0])}
        else:
            tuned[name] = {str(key): str(config) for key, config in tuner.cache.items()}
    return tuned


def reset_tuning() -> None:
    """Forget the autotuners' choices: the next launch of each key benchmarks its configurations
    anew (how a benchmark tunes each layout on itself)."""
    for tuner in _autotuners().values():
        tuner.cache.clear()


# ---------------------------------------------------------------------------- launchers
def _empty(
    like: torch.Tensor, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Uninitialised output: ``like``'s shape and memory layout, or a contiguous ``shape``."""
    if shape is None:
        return torch.empty_like(like, dtype=dtype)
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Dtype and head dimension (`kernels.reference.check_attention_inputs` checks the shapes)."""
    check_dtypes(q=q, k=k, v=v)
    check_d_head(q.shape[-1])


def _precision(q: torch.Tensor) -> str:
    """``tl.dot`` input precision: TF32 for fp32 inputs on the GPU when torch allows it."""
    if q.is_cuda and q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _layout_args(
    layout: Layout, rows: tuple[torch.Tensor, torch.Tensor], batch: int, heads: int
) -> tuple[list[torch.Tensor], list[int]]:
    """Kernel arguments for a row view ``(indices, counts)`` of ``layout`` and its token-level
    fields, broadcast to ``(batch, heads)`` (stride 0 on broadcast dimensions): tensors first
    (``indices, counts, token_mask, threshold``), then their strides."""
    indices, counts = (t.expand(batch, heads, *t.shape[2:]) for t in rows)
    expanded = layout.expand(batch, heads)
    token_mask = expanded.token_mask
    if token_mask is None:  # never read: HAS_TOKEN_MASK is False
        token_mask, mask_strides = counts, (0, 0, 0, 0)
    else:
        token_mask, mask_strides = token_mask.view(torch.uint8), token_mask.stride()
    threshold = expanded.row_threshold
    if threshold is None:  # never read: HAS_THRESHOLD is False
        threshold, threshold_strides = counts, (0, 0, 0)
    else:
        threshold_strides = threshold.stride()
    return [indices, counts, token_mask, threshold], [
        *indices.stride(),
        *counts.stride(),
        *mask_strides,
        *threshold_strides,
    ]


def _constexprs(q: torch.Tensor, layout: Layout) -> dict:
    d_head = q.shape[-1]
    return dict(
        D_HEAD=d_head,
        BLOCK_D=block_d(d_head),
        BLOCK_Q=layout.block_q,
        BLOCK_K=layout.block_k,
        CAUSAL=layout.causal,
        HAS_TOKEN_MASK=layout.token_mask is not None,
        HAS_THRESHOLD=layout.row_threshold is not None,
        PRECISION=_precision(q),
    )


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    scale: float,
    variant: Variant = variants.PLAIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward.

    Args:
        q: ``[batch, heads, q_len, d_head]``; k, v: ``[batch, kv_heads, kv_len, d_head]``, one dtype
            of fp16/bf16/fp32, any strides (descriptor loads: see `variants.descriptor_reason`).
        layout: the `Layout` for (q_len, kv_len), batch/heads 1 or matching q.
        scale: score scale.
        variant: loads and grid (`kernels.triton.variants`).

    Returns:
        ``out`` ``[batch, heads, q_len, d_head]`` in q's dtype and ``lse``
        ``[batch, heads, q_len]`` float32 (natural log; -inf where a row keeps no key).
    """
    _check_inputs(q, k, v)
    descriptors = _descriptor_loads(variant, q=q, k=k, v=v)
    batch, heads, q_len, _ = q.shape
    out = _empty(q)
    lse = _empty(q, (batch, heads, q_len), torch.float32)
    tensors, strides = _layout_args(layout, (layout.kv_indices, layout.kv_counts), batch, heads)
    persistent = variant.grid == "persistent"
    if persistent:
        items = variants.work_list(layout, batch, heads)
        programs = variants.persistent_programs(q.device, items.shape[0])

        def grid(meta: dict) -> tuple[int]:
            return (programs,)

    else:
        items = tensors[1]  # never read

        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(q_len, meta["BLOCK_M"]), batch * heads

    _fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        *tensors,
        items,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        *strides,
        heads,
        heads // k.shape[1],
        q_len,
        k.shape[2],
        items.shape[0],
        float(scale),
        DESCRIPTORS=descriptors,
        PERSISTENT=persistent,
        **_constexprs(q, layout),
        **_interpreter_flags(descriptors, _FWD_WS_CONFIGS),
    )
    return out, lse


def _descriptor_loads(variant: Variant, **tensors: torch.Tensor) -> bool:
    """Whether ``variant`` loads through tensor descriptors; ``ValueError`` when ``tensors``
    cannot be described. Sets Triton's allocator for the descriptors' scratch memory."""
    if variant.loads != "descriptors":
        return False
    reason = variants.descriptor_reason(**tensors)
    if reason is not None:
        raise ValueError(f"loads='descriptors' cannot run: {reason}")
    triton.set_allocator(variants.scratch)
    return True


def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    layout: Layout,
    scale: float,
    variant: Variant = variants.PLAIN,
    grad_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of block-sparse attention (shapes and dtypes of q, k, v), given
    the forward's ``out`` and ``lse`` and the output gradient ``grad_out`` (shape of ``out``, any
    strides; copied when descriptor loads cannot address it), and optionally the logsumexp's
    gradient ``grad_lse`` ``[batch, heads, q_len]``: since ``d lse_i / d s_ij = p_ij``, it enters
    as ``delta_i - grad_lse_i`` in ``ds = p * (dp - delta)``.
    ``variant.loads`` applies to the dQ and dK/dV kernels (their grids are per tile)."""
    _check_inputs(q, k, v)
    if variant.loads == "descriptors":
        grad_out = variants.descriptor_ready(grad_out)
    descriptors = _descriptor_loads(variant, q=q, k=k, v=v, grad_out=grad_out)
    batch, heads, q_len, d_head = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    lse = lse.contiguous()
    constexprs = _constexprs(q, layout)

    delta = _empty(q, (batch, heads, q_len), torch.float32)
    delta_rows = 64
    _delta_kernel[(triton.cdiv(q_len, delta_rows), batch * heads)](
        out,
        grad_out,
        delta,
        *out.stride(),
        *grad_out.stride(),
        heads,
        q_len,
        D_HEAD=d_head,
        BLOCK_D=constexprs["BLOCK_D"],
        BLOCK_M=delta_rows,
    )
    if grad_lse is not None:
        delta -= grad_lse.to(torch.float32)

    grad_q = _empty(q)
    tensors, strides = _layout_args(layout, (layout.kv_indices, layout.kv_counts), batch, heads)
    _dq_kernel[lambda meta: (triton.cdiv(q_len, meta["BLOCK_M"]), batch * heads)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        grad_q,
        *tensors,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *grad_out.stride(),
        *grad_q.stride(),
        *strides,
        heads,
        group,
        q_len,
        kv_len,
        float(scale),
        DESCRIPTORS=descriptors,
        **constexprs,
        **_interpreter_flags(descriptors, _DQ_WS_CONFIGS),
    )

    grad_k, grad_v = _empty(k), _empty(v)
    tensors, strides = _layout_args(layout, layout.transpose(), batch, heads)
    _dkdv_kernel[lambda meta: (triton.cdiv(kv_len, meta["BLOCK_N"]), batch * kv_heads)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        grad_k,
        grad_v,
        *tensors,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *grad_out.stride(),
        *grad_k.stride(),
        *grad_v.stride(),
        *strides,
        heads,
        group,
        q_len,
        kv_len,
        float(scale),
        DESCRIPTORS=descriptors,
        **constexprs,
        **_interpreter_flags(descriptors, _DKDV_WS_CONFIGS),
    )
    return grad_q, grad_k, grad_v

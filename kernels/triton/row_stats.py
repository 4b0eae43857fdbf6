"""Streaming per-row statistics of the attention distribution, without the N x N score matrix.

For every query row ``i`` of ``P = softmax(scale * q k^T)`` (dense, optionally causal with the
end-aligned mask of `kernels.layout`), `row_stats` returns what the oracle
`kernels.reference.row_stats` returns: logsumexp, max score, entropy, the top-p budgets ``k_p`` of
several masses ``p`` at once, the mass inside a selection `Layout` and the mass on given relevant
positions. Scores are recomputed tile by tile (``BLOCK_M`` query rows x ``BLOCK_N`` keys) and never
stored; the extra memory is O(rows x len(ps)).

Passes (all in base 2: ``s = scale * log2(e) * q.k``, ``u = s - lse2`` is the log2-probability):

1. **Statistics** (`_stats_kernel`, one QK^T): online max ``m``, normaliser
   ``l = sum 2^(s - m)``, entropy accumulator ``e = sum 2^(s - m) (s - m)`` (rescaled like ``l`` when
   ``m`` grows: ``e <- 2^(m - m') (e + (m - m') l)``), so that ``lse2 = m + log2 l`` and
   ``H = ln 2 (log2 l - e / l)`` (= lse - E_p[s] in nats), the row's min score (for the search
   range) and ``sum 2^(s - m)`` over the selected entries (rescaled the same way; selection mass
   = that / ``l``). Selection membership of an entry: its (query block, key block) is set in the
   layout's dense block mask (an O(1) lookup), then the layout's own causal mask, token mask and row
   threshold at token level.
2. **Top-p budgets** (one QK^T per pass, no sort). Twilight's rule as a search on the
   probability value: with ``B(t)`` = mass of the keys with ``u < t`` and
   ``slack_p = 1 - p (1 - 1e-12)`` (the oracle's tolerance), the budget is the number of keys with
   ``u >= t*``, ``t* = max {t : B(t) <= slack_p}`` (a key value: the boundary key). A pass
   evaluates ``B`` and the count of keys below at candidate thresholds; between the two candidates
   where ``B`` crosses the slack lies a bracket ``[lo, hi)`` that holds ``t*``, with ``n_in`` keys.
   ``budget = (#keys above the bracket) + r`` where ``r`` keys of the bracket must join to reach
   the mass: ``r = 1`` when ``n_in = 1``; otherwise ``r`` is bounded by the bracket's mass ``M``
   and the needed mass ``X``: ``max(ceil(X / 2^hi), ceil(n_in - (M - X) / 2^lo)) <= r <=
   ceil(X n_in / M)`` (the top keys weigh at least the bracket average), and (row, p) is settled
   when the bounds meet.
   **Bracket pass** (`_bracket_kernel`): the statistics pass also accumulates
   ``sum 2^(s - m) (s - m)^2``, which with the entropy gives the mass-weighted mean and spread of
   ``u``; one pass evaluates ``B`` at `BRACKET_EDGES` candidates per row shared by every p (the
   ends of the range ``[max(u_min, log2(slack / n)), u_max]``, below ``log2(slack / n)`` all keys
   together weighing less than the slack; `BRACKET_RANGE_FRACTIONS` of that range; and
   ``mean + z spread`` for z in `BRACKET_Z`, around a Gaussian's ``1 - p`` quantiles) and gives per
   (row, p) its bracket and the interval ``[low, high]`` of the bounds, which holds the budget
   (equal where they pin it: exact), with an estimate inside it (the bracket's keys taken as
   spread evenly in ``u``). ``budgets="bracket"`` stops here (or, with ``budget_rtol``, refines
   the (row, p) whose interval is wider than that fraction of the estimate).
   **Search passes** (`_search_kernel`): the exact budgets refine every open (row, p) by a T-ary
   search: a pass evaluates ``B`` at `SEARCH_EDGES` evenly spaced candidates of the entry's own
   bracket and keeps the sub-interval where it crosses, shrinking the bracket 7-fold. A pass
   takes only the unsettled entries: each head's list of ``row * len(ps) + p`` (`true_positions`,
   read at the pass's sync) cut into tiles of ``BLOCK_M`` entries, so a pass costs in proportion
   to the open (row, p), and a row comes once per open p. Passes repeat (a host loop, one sync per
   pass) until every entry is settled or its bracket is narrower than fp32 resolution
   (``TIE_WIDTH``); then ``r = ceil(X n_in / M)``, exact for equal probabilities (a uniform row of
   ``n`` keys gets ``ceil(p n)``). Masses are compared as ``B(t) <= slack * total`` with
   ``total`` summed in the same pass (so the rounding of lse cancels) and accumulated across
   tiles in fp64.
3. **Relevant mass** (`_relevant_kernel`): ``sum_r 2^(s(i, pos_r) - lse2_i)`` over the given
   positions (causally visible, not -1), one gathered key row per position: O(rows x R x d).

Exactness of the budgets: they equal the sort-based oracle (`kernels.reference.top_p_budget`)
unless (a) the cumulative mass at the boundary lies within fp32 rounding of ``p`` (about 1e-7 of
the row's mass: the scores come from fp32 dots, the masses from fp32 exponentials summed per tile
and then in fp64), or (b) keys within the final bracket width of the boundary key have
probabilities that differ (ties are fine) and the needed mass ``X`` falls within that relative
difference of a multiple of their common probability. The final width is ``TIE_WIDTH = 2^-20``
times ``1 + |u| + |lse2|``, the fp32 resolution of the log2-probabilities, so (b) needs
probabilities equal to ~1e-6 relative. On random scores (distinct probabilities) the budgets
therefore equal the oracle except in (a), whose chance per (row, p) is about ``1e-7 / weight of
the boundary key``, i.e. ~``n * 1e-7`` for rows of ``n`` similar keys; exact ties (a uniform row of
``n`` keys: ``ceil(p n)``) are exact.

Cost: pass 1 is about one attention forward (one QK^T, one exp2 and a few more operations per
score). The bracket and search passes recompute QK^T but also compare every score with every
candidate threshold and add it into a count and a mass per candidate (10 counted in the bracket
pass, 8 per entry in a search pass), so the candidate counting on the CUDA cores dominates, not
the recomputed QK^T; this is why the search passes visit only the open (row, p). Entries of
distinct probabilities settle after ``~log_7(width / gap)`` search passes, ``width`` being the
bracket pass's bracket and ``gap`` the log2-probability distance from the boundary key to its
neighbours (usually less: the bounds on ``r`` settle a bracket that still holds a few keys). The cost model
and the measurements are in `bench/NOTES.md` ("Row statistics: cost model and measurements").

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k: [batch, kv_heads, kv_len, d_head]``; query head
``h`` reads kv head ``h // (heads // kv_heads)``. Inputs fp16, bf16 or fp32 (fp32 dots in full
precision); head dims other than a power of two are padded by masks on the d axis.
"""

from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.dispatch import interpret_mode
from kernels.layout import Layout, true_positions
from kernels.reference import Budgets, RowStats
from kernels.triton.common import (
    MIN_DOT,
    TileShape,
    autotune_configs,
    block_d,
    causal_visible,
    check_d_head,
    check_qk,
    layout_keeps,
    load_rows,
    load_threshold,
    tile_shape,
    visible,
)

log = logging.getLogger(__name__)

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)

SEARCH_EDGES = 8
"""Candidate thresholds per (row, p) in a search pass."""
MAX_SEARCH_PASSES = 16
"""Upper bound on search passes; entries settle far earlier (brackets reach fp32 resolution after
about log_7(range / 1e-6) <= 10 passes)."""
TIE_WIDTH = 2.0**-20
"""Brackets narrower than this (relative to the score magnitude) are not refined further."""
BRACKET_Z = (-2.37, -1.77, -1.65, -1.3, -1.27, 0.0)
"""Candidates of the bracket pass at ``mean + z * spread`` of the row's log2-probabilities, near
a Gaussian's ``1 - p`` quantiles for p = 0.99, 0.95, 0.9 and 0.5 (z = -2.33, -1.64, -1.28, 0),
some in close pairs: a boundary key that lands between two close candidates has few keys in its
bracket, which closes the budget's interval."""
BRACKET_RANGE_FRACTIONS = (0.3, 0.55, 0.65)
"""Candidates of the bracket pass at these fractions of the row's range ``[lo, hi]``: rows whose
top keys (sinks) hold much of the mass have their boundaries far from the Gaussian quantiles.
With `BRACKET_Z`, chosen on `bench/bracket_model.py`'s float64 model of the pass (structured
inputs at 4K-64K and Gaussian ones at 1K-16K; `bench/NOTES.md`)."""
BRACKET_EDGES = 2 + len(BRACKET_RANGE_FRACTIONS) + len(BRACKET_Z)
"""Candidate thresholds per row in the bracket pass."""
SLACK_TOLERANCE = 1e-12
"""The oracle's relative tolerance on the target mass (`kernels.reference.top_p_budget`)."""
RANGE_PAD = 1e-3
"""Margin (log2 units) around the first search range against recomputation rounding."""

# (BLOCK_M, BLOCK_N, num_warps, num_stages) on the GPU (see `_autotune` for the short / fp32 ones).
_STATS_CONFIGS = [
    (64, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 128, 4, 3),
    (16, 64, 4, 3),
]
_SEARCH_CONFIGS = [
    (32, 32, 4, 2),
    (64, 64, 4, 2),
    (128, 64, 8, 2),
    (64, 128, 8, 2),
    (128, 128, 8, 2),
]
_STATS_SHORT, _STATS_FP32 = (64, 64, 4, 3), (16, 64, 4, 3)
_SEARCH_SHORT = _SEARCH_FP32 = (32, 32, 4, 2)
_RELEVANT_ROWS = 32
"""Query rows per program of the relevant-mass gather."""


SHORT_KEYS = 1024
"""Up to this many keys (``len_bucket``) only one configuration runs: tile shapes matter
little there, and each configuration tried is one more compilation (seconds to tens of seconds
for the search kernel), which dominates short workloads such as evaluations during training."""


def _autotune(
    gpu_configs: list[TileShape],
    key: list[str],
    *,
    short: TileShape,
    fp32: TileShape,
    restore: tuple[str, ...] = (),
):
    """Autotuner over ``gpu_configs``; a single config under the interpreter (tuning there is slow
    and pointless). ``restore`` names the arguments a launch updates in place: tuning runs each
    configuration several times, so their values are restored after every trial. Up to
    `SHORT_KEYS` keys only ``short`` runs. fp32 inputs run only ``fp32``:
    with fp32 tiles of 64 x 64 and more (or 64 rows at d_head 128) ptxas gives these kernels
    8-15 KB of stack per thread on sm_90, and the driver reserves the stack of every thread the
    GPU can hold, ~4 GB of device memory per process for as long as it lives; ``fp32`` tiles keep
    it under 1 KB."""
    configs = autotune_configs(gpu_configs, interpreter_tile=128)
    if interpret_mode():  # a single configuration: nothing to prune
        return triton.autotune(configs=configs, key=key, restore_value=list(restore))

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        args = {**named_args, **kwargs}
        return candidate_configs(configs, args["Q"].dtype, args["len_bucket"], short, fp32)

    return triton.autotune(
        configs=configs,
        key=key,
        prune_configs_by={"early_config_prune": prune},
        restore_value=list(restore),
    )


def candidate_configs(
    configs: list[triton.Config],
    dtype: torch.dtype,
    len_bucket: int,
    short: TileShape,
    fp32: TileShape,
) -> list[triton.Config]:
    """The configurations the autotuner tries (see `_autotune`)."""
    if dtype == torch.float32:
        wanted = fp32
    elif len_bucket <= SHORT_KEYS:
        wanted = short
    else:
        return configs
    chosen = [config for config in configs if tile_shape(config) == wanted]
    if not chosen:
        raise ValueError(f"configuration {wanted} is not among the autotuned ones")
    return chosen


# ---------------------------------------------------------------------------- jit helpers
@triton.jit
def _raw_scores(
    q,
    K,
    keys,
    stride_kn,
    cols,
    stride_kd,
    kv_len,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Unscaled ``q . k`` of the tile's rows and ``keys``, ``[BLOCK_M, BLOCK_N]`` fp32."""
    k = load_rows(K, keys, stride_kn, cols, stride_kd, kv_len, D_HEAD, BLOCK_D, NEGATIVE_ROWS=True)
    return tl.dot(q, tl.trans(k), input_precision=PRECISION)


@triton.jit
def _key_end(last_row, q_len, kv_len, CAUSAL: tl.constexpr):
    """End (exclusive) of the keys that rows up to ``last_row`` (< q_len) may see."""
    if CAUSAL:
        return tl.maximum(tl.minimum(last_row + (kv_len - q_len) + 1, kv_len), 0)
    return kv_len


@triton.jit
def _row_key_counts(rows, q_len, kv_len, CAUSAL: tl.constexpr):
    """Number of keys each row sees, ``[BLOCK_M]`` int32 (0 for rows past ``q_len``)."""
    if CAUSAL:
        n = tl.minimum(tl.maximum(rows + (kv_len - q_len) + 1, 0), kv_len)
    else:
        n = tl.zeros(rows.shape, dtype=tl.int32) + kv_len
    return tl.where(rows < q_len, n, 0)


@triton.jit
def _selected(
    keep,
    rows,
    keys,
    qk,
    scale,
    blocks,
    stride_sq,
    stride_sk,
    token_mask,
    stride_tq,
    stride_tk,
    threshold,
    q_len,
    kv_len,
    SEL_BLOCK_Q: tl.constexpr,
    SEL_BLOCK_K: tl.constexpr,
    SEL_CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
):
    """Entries of ``keep`` that the selection layout keeps: listed block (dense block-mask lookup),
    then the layout's causal mask, token mask and row threshold (`layout_keeps`)."""
    block_rows = (rows // SEL_BLOCK_Q).to(tl.int64)
    block_cols = (keys // SEL_BLOCK_K).to(tl.int64)
    listed = tl.load(
        blocks + block_rows[:, None] * stride_sq + block_cols[None, :] * stride_sk,
        mask=keep,
        other=0,
    )
    return layout_keeps(
        keep & (listed != 0),
        rows[:, None],
        keys[None, :],
        qk,
        scale,
        threshold[:, None],
        token_mask,
        stride_tq,
        stride_tk,
        q_len,
        kv_len,
        SEL_CAUSAL,
        HAS_TOKEN_MASK,
        HAS_THRESHOLD,
    )


@triton.jit
def _edge_at(lo, hi, step, c, EDGES: tl.constexpr):
    """Candidate threshold ``c`` (a per-row index tensor) of the bracket ``[lo, hi]``:
    ``lo + c * step`` by one fused multiply-add, the last is ``hi`` itself. The search loop
    computes the same values bit for bit (inlined there)."""
    return tl.where(c == EDGES - 1, hi, tl.fma(step, c.to(tl.float32), lo))


@triton.jit
def _count_ones(ones):
    """``[M]`` int32: the 1.0s in each row of ``ones`` (``[M, N]`` fp32, each 0.0 or 1.0, N < 512).

    One integer sum of the bit patterns instead of a float sum: 1.0f is ``127 << 23``, so the sum
    wraps to ``(127 n mod 512) << 23`` and 383 inverts 127 modulo 512. The integer adds go three
    operands at a time (``IADD3``): ~0.5 instructions per element instead of one ``FADD``."""
    tl.static_assert(ones.shape[1] < 512)
    bits = tl.sum(ones.to(tl.int32, bitcast=True), 1)
    return (((bits >> 23) & 511) * 383) & 511


@triton.jit
def _add_below(u, p, edge, column, cols, tile_mass, tile_count):
    """``(tile_mass, tile_count)`` ``[BLOCK_M, COLS]`` with column ``column`` set to the mass and
    the number of the tile's keys below ``edge`` ``[BLOCK_M]`` (``u``, ``p``: the tile's
    log2-probabilities and probabilities). The comparison is 0 or 1 as fp32: one compare, an
    FMA into the mass (p is finite, so 0 * p = 0 and 1 * p = p exactly) and a count of the ones
    (`_count_ones`); a boolean feeding both sums compiled to ~8 instructions per score and
    candidate."""
    below = (u < edge[:, None]).to(tl.float32)
    here = cols[None, :] == column
    tile_mass = tl.where(here, tl.sum(below * p, 1)[:, None], tile_mass)
    tile_count = tl.where(here, _count_ones(below)[:, None], tile_count)
    return tile_mass, tile_count


@triton.jit
def _crossing(below_mass, below_count, limit, cols, EDGES: tl.constexpr):
    """The candidate ``c`` ``[BLOCK_M]`` where the mass below crosses ``limit``, i.e. the bracket
    ``[edge c, edge c + 1)`` that holds the boundary key, with the masses and counts below its two
    ends. ``B(edge 0) <= limit`` is known and B grows with the edge, so c = number of inner edges
    with ``B <= limit``. ``below_mass`` / ``below_count``: ``[BLOCK_M, COLS]``, column c for
    candidate c < EDGES."""
    inner = (cols >= 1) & (cols <= EDGES - 2)
    crossing = tl.sum((inner[None, :] & (below_mass <= limit[:, None])).to(tl.int32), 1)
    at_lo = cols[None, :] == crossing[:, None]
    at_hi = cols[None, :] == crossing[:, None] + 1
    mass_lo = tl.sum(tl.where(at_lo, below_mass, 0.0), 1)
    mass_hi = tl.sum(tl.where(at_hi, below_mass, 0.0), 1)
    count_lo = tl.sum(tl.where(at_lo, below_count, 0), 1)
    count_hi = tl.sum(tl.where(at_hi, below_count, 0), 1)
    return crossing, mass_lo, mass_hi, count_lo, count_hi


@triton.jit
def _budget_bounds(mass_lo, mass_hi, count_lo, count_hi, n_keys, limit, edge_lo, edge_hi):
    """Bounds ``(lower, upper)`` on the budget from the bracket ``[edge_lo, edge_hi)`` that holds
    the boundary key.

    ``mass_*``/``count_*``: fp64 mass and int32 count of the keys below each edge; ``limit``: the
    slack times the row's total mass. The budget is the keys above the bracket plus the ``r``
    bracket keys needed to bring the mass below ``edge_lo`` under the limit, bounded as in the
    module docstring (the upper bound is exact for equal probabilities); both are equal when the
    bracket holds one key. The lower bounds are loosened by ``1e-6`` (relative) so that fp32
    rounding never makes them cross the true ``r``.
    """
    n_in = (count_hi - count_lo).to(tl.float64)
    need = mass_hi - limit  # mass the bracket's top keys must add
    bracket = mass_hi - mass_lo
    # Upper bound (exact for equal probabilities): the top r keys weigh at least r / n_in of it.
    ratio = need / tl.where(bracket > 0.0, bracket, 1.0) * n_in
    upper = tl.where(bracket > 0.0, tl.minimum(tl.maximum(ratio, 1.0), n_in), 1.0)
    upper = tl.math.ceil(tl.maximum(upper, 1.0))
    # Lower bounds: each key of the bracket weighs less than 2^edge_hi and at least 2^edge_lo.
    heaviest = tl.math.exp2(edge_hi).to(tl.float64) * (1.0 + 1e-6)
    lightest = tl.math.exp2(edge_lo).to(tl.float64) * (1.0 - 1e-6)
    lower_heavy = tl.math.ceil(tl.minimum(need / heaviest, n_in))
    lower_light = tl.math.ceil(tl.minimum(n_in - (bracket - need) / lightest, n_in))
    lower = tl.where(n_in <= 1.0, upper, tl.maximum(tl.maximum(lower_heavy, lower_light), 1.0))
    above = n_keys - count_hi
    lower = tl.where(n_keys > 0, tl.minimum(tl.maximum(above + lower.to(tl.int32), 1), n_keys), 0)
    upper = tl.where(n_keys > 0, tl.minimum(tl.maximum(above + upper.to(tl.int32), 1), n_keys), 0)
    return lower, upper


@triton.jit
def _resolve(mass_lo, mass_hi, count_lo, count_hi, n_keys, limit, edge_lo, edge_hi):
    """``(budget, settled)`` from the bracket ``[edge_lo, edge_hi)`` (`_budget_bounds`): the upper
    bound, and whether the bounds pin it."""
    lower, upper = _budget_bounds(
        mass_lo, mass_hi, count_lo, count_hi, n_keys, limit, edge_lo, edge_hi
    )
    return upper, lower >= upper


# ---------------------------------------------------------------------------- pass 1: statistics
@triton.jit
def _stats_tile(
    q,
    K,
    n0,
    rows,
    cols,
    m_i,
    l_i,
    e_i,
    e2_i,
    sel_i,
    min_i,
    stride_kn,
    stride_kd,
    blocks,
    stride_sq,
    stride_sk,
    token_mask,
    stride_tq,
    stride_tk,
    threshold,
    q_len,
    kv_len,
    scale,
    qk_scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SELECTION: tl.constexpr,
    SEL_BLOCK_Q: tl.constexpr,
    SEL_BLOCK_K: tl.constexpr,
    SEL_CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    SPREAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
):
    """The statistics of `_stats_kernel` (running max ``m_i``, sum ``l_i``, the entropy and spread
    sums ``e_i`` / ``e2_i``, selection mass ``sel_i``, min ``min_i``; log2 units) updated with key
    tile ``[n0, n0 + BLOCK_N)``. Without MASKED the caller guarantees that every row sees every
    key of the tile, and the scores go unmasked: the max and min are taken on the raw scores
    (``qk_scale > 0`` commutes with them exactly) and the shifted score is one FMA."""
    keys = n0 + tl.arange(0, BLOCK_N)
    qk = _raw_scores(q, K, keys, stride_kn, cols, stride_kd, kv_len, D_HEAD, BLOCK_D, PRECISION)
    if MASKED or HAS_SELECTION:
        keep = visible(rows[:, None], keys[None, :], q_len, kv_len, CAUSAL)
    if MASKED:
        s = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        tile_min = tl.min(tl.where(keep, s, float("inf")), 1)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        tile_min = tl.min(qk, 1) * qk_scale
    # A row with no visible key so far keeps m = -inf; shift by 0 instead (exp2(-inf) = 0).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    shift = tl.where(l_i > 0.0, m_i - m_safe, 0.0)
    if MASKED:
        d = s - m_safe[:, None]
        p = tl.math.exp2(d)  # 0 where not visible
        d = tl.where(keep, d, 0.0)
    else:
        d = qk * qk_scale - m_safe[:, None]
        p = tl.math.exp2(d)
    if SPREAD:  # sum w (d + shift)^2 = sum w d^2 + 2 shift sum w d + shift^2 sum w
        e2_i = alpha * (e2_i + shift * (2.0 * e_i + shift * l_i))
        e2_i += tl.sum(p * d * d, 1)
    e_i = alpha * (e_i + shift * l_i) + tl.sum(p * d, 1)
    l_i = l_i * alpha + tl.sum(p, 1)
    min_i = tl.minimum(min_i, tile_min)
    if HAS_SELECTION:
        chosen = _selected(
            keep,
            rows,
            keys,
            qk,
            scale,
            blocks,
            stride_sq,
            stride_sk,
            token_mask,
            stride_tq,
            stride_tk,
            threshold,
            q_len,
            kv_len,
            SEL_BLOCK_Q,
            SEL_BLOCK_K,
            SEL_CAUSAL,
            HAS_TOKEN_MASK,
            HAS_THRESHOLD,
        )
        sel_i = sel_i * alpha + tl.sum(tl.where(chosen, p, 0.0), 1)
    return m_new, l_i, e_i, e2_i, sel_i, min_i


@_autotune(
    _STATS_CONFIGS,
    key=["D_HEAD", "CAUSAL", "HAS_SELECTION", "len_bucket"],
    short=_STATS_SHORT,
    fp32=_STATS_FP32,
)
@triton.jit
def _stats_kernel(
    Q,
    K,
    Lse2,
    Max2,
    Min2,
    Entropy,
    Spread,
    SelMass,
    SelBlocks,
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
    stride_sb,
    stride_sh,
    stride_sq,
    stride_sk,
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
    len_bucket,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SELECTION: tl.constexpr,
    SEL_BLOCK_Q: tl.constexpr,
    SEL_BLOCK_K: tl.constexpr,
    SEL_CAUSAL: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    PRECISION: tl.constexpr,
    SPREAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row lse2, max and min score (log2 units), entropy (nats) and selection mass, each
    ``[batch * heads * q_len]`` fp32; with SPREAD also the standard deviation of the
    log2-probabilities under the row's own distribution (``Spread``; their mean is
    ``-entropy / ln 2``). Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    m0 = tl.program_id(0) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    q = load_rows(
        Q + b * stride_qb + h * stride_qh,
        rows,
        stride_qm,
        cols,
        stride_qd,
        q_len,
        D_HEAD,
        BLOCK_D,
        NEGATIVE_ROWS=True,
    )
    K += b * stride_kb + (h // group) * stride_kh
    blocks = SelBlocks + b * stride_sb + h * stride_sh
    token_mask = TokenMask + b * stride_tb + h * stride_th
    threshold = load_threshold(
        Threshold + b * stride_rb + h * stride_rh, rows, stride_rq, q_len, HAS_THRESHOLD
    )
    qk_scale = scale * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    e_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum 2^(s - m) (s - m)
    e2_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum 2^(s - m) (s - m)^2 (SPREAD)
    sel_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    min_i = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)
    last_row = tl.minimum(m0 + BLOCK_M, q_len) - 1
    # Tiles before `interior` hold only keys that every row of the program sees: phase 0 walks
    # them without masks, phase 1 the rest (the causal diagonal, the last partial key tile).
    interior = _key_end(m0, q_len, kv_len, CAUSAL) // BLOCK_N * BLOCK_N
    key_end = _key_end(last_row, q_len, kv_len, CAUSAL)
    for phase in tl.static_range(2):
        for n0 in range(
            0 if phase == 0 else interior, interior if phase == 0 else key_end, BLOCK_N
        ):
            m_i, l_i, e_i, e2_i, sel_i, min_i = _stats_tile(
                q, K, n0, rows, cols, m_i, l_i, e_i, e2_i, sel_i, min_i,
                stride_kn, stride_kd, blocks, stride_sq, stride_sk, token_mask, stride_tq,
                stride_tk, threshold, q_len, kv_len, scale, qk_scale,
                D_HEAD, BLOCK_D, CAUSAL, HAS_SELECTION, SEL_BLOCK_Q, SEL_BLOCK_K, SEL_CAUSAL,
                HAS_TOKEN_MASK, HAS_THRESHOLD, PRECISION, SPREAD, BLOCK_N, phase == 1,
            )  # fmt: skip

    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    log_l = tl.math.log2(l_safe)
    offsets = pid_bh.to(tl.int64) * q_len + rows
    in_range = rows < q_len
    tl.store(Lse2 + offsets, tl.where(nonempty, m_i + log_l, float("-inf")), mask=in_range)
    tl.store(Max2 + offsets, m_i, mask=in_range)
    tl.store(Min2 + offsets, tl.where(nonempty, min_i, float("inf")), mask=in_range)
    entropy = tl.maximum((log_l - e_i / l_safe) * 0.6931471805599453, 0.0)
    tl.store(Entropy + offsets, tl.where(nonempty, entropy, 0.0), mask=in_range)
    if SPREAD:
        mean = e_i / l_safe
        spread = tl.sqrt(tl.maximum(e2_i / l_safe - mean * mean, 0.0))
        tl.store(Spread + offsets, tl.where(nonempty, spread, 0.0), mask=in_range)
    tl.store(SelMass + offsets, sel_i / l_safe, mask=in_range)


# ---------------------------------------------------------------------------- top-p search passes
@_autotune(
    _SEARCH_CONFIGS,
    key=["D_HEAD", "CAUSAL", "NUM_PS", "len_bucket"],
    short=_SEARCH_SHORT,
    fp32=_SEARCH_FP32,
    restore=("Lo", "Hi", "Done", "Budget"),
)
@triton.jit
def _search_kernel(
    Q,
    K,
    Lse2,
    Slack,
    Lo,
    Hi,
    Done,
    Budget,
    Entries,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_entries,
    n_entries,
    heads,
    group,
    q_len,
    kv_len,
    scale,
    len_bucket,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    NUM_PS: tl.constexpr,
    EDGES: tl.constexpr,
    TIE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One T-ary search pass over unsettled (row, p) entries (see the module docstring).

    State ``[batch * heads * q_len, NUM_PS]``, updated in place: bracket ``[Lo, Hi]``
    (log2-probabilities, fp32), ``Done`` (int8) and ``Budget`` (int32). ``Slack`` ``[NUM_PS]``
    fp64. ``Entries`` ``[batch * heads, n_entries]`` int32: per head, the increasing indices
    ``row * NUM_PS + p`` of its unsettled entries, padded with ``q_len * NUM_PS``; program ``i``
    takes entries ``[i BLOCK_M, (i + 1) BLOCK_M)`` of its head (each slot its own row and p, a row
    may come once per open p), grid ``(cdiv(n_entries, BLOCK_M), batch * heads)``, and evaluates
    the mass below ``EDGES`` evenly spaced candidates of each entry's bracket.
    """
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    slots = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    entries = tl.load(
        Entries + pid_bh.to(tl.int64) * stride_entries + slots,
        mask=slots < n_entries,
        other=q_len * NUM_PS,
    )
    rows = entries // NUM_PS
    masses = entries % NUM_PS
    cols_d = tl.arange(0, BLOCK_D)
    in_range = rows < q_len
    q = load_rows(
        Q + b * stride_qb + h * stride_qh,
        rows,
        stride_qm,
        cols_d,
        stride_qd,
        q_len,
        D_HEAD,
        BLOCK_D,
        NEGATIVE_ROWS=True,
    )
    K += b * stride_kb + (h // group) * stride_kh
    state = pid_bh.to(tl.int64) * q_len * NUM_PS + entries  # [BLOCK_M] offsets into the state
    lse2 = tl.load(Lse2 + pid_bh.to(tl.int64) * q_len + rows, mask=in_range, other=0.0)
    n_keys = _row_key_counts(rows, q_len, kv_len, CAUSAL)
    qk_scale = scale * 1.4426950408889634
    lo = tl.load(Lo + state, mask=in_range, other=0.0)
    hi = tl.load(Hi + state, mask=in_range, other=0.0)
    step = (hi - lo) / (EDGES - 1)
    last_row = tl.max(tl.where(in_range, rows, -1))

    cols = tl.arange(0, EDGES)  # column c: keys below candidate c
    below_mass = tl.zeros([BLOCK_M, EDGES], dtype=tl.float64)
    below_count = tl.zeros([BLOCK_M, EDGES], dtype=tl.int32)
    total = tl.zeros([BLOCK_M], dtype=tl.float64)
    for n0 in range(0, _key_end(last_row, q_len, kv_len, CAUSAL), BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        qk = _raw_scores(
            q, K, keys, stride_kn, cols_d, stride_kd, kv_len, D_HEAD, BLOCK_D, PRECISION
        )
        keep = visible(rows[:, None], keys[None, :], q_len, kv_len, CAUSAL)
        u = tl.where(keep, qk * qk_scale - lse2[:, None], float("inf"))  # +inf: never below
        p = tl.where(keep, tl.math.exp2(u), 0.0)
        total += tl.sum(p, 1).to(tl.float64)
        tile_mass = tl.zeros([BLOCK_M, EDGES], dtype=tl.float32)
        tile_count = tl.zeros([BLOCK_M, EDGES], dtype=tl.int32)
        for c in tl.static_range(EDGES):
            # `_edge_at` inlined (a helper call per candidate is slow under the interpreter).
            edge = hi if c == EDGES - 1 else tl.fma(step, c * 1.0, lo)
            tile_mass, tile_count = _add_below(u, p, edge, c, cols, tile_mass, tile_count)
        below_mass += tile_mass.to(tl.float64)
        below_count += tile_count

    limit = tl.load(Slack + masses, mask=in_range, other=0.0) * total
    crossing, mass_lo, mass_hi, count_lo, count_hi = _crossing(
        below_mass, below_count, limit, cols, EDGES
    )
    edge_lo = _edge_at(lo, hi, step, crossing, EDGES)
    edge_hi = _edge_at(lo, hi, step, crossing + 1, EDGES)
    budget, settled = _resolve(
        mass_lo, mass_hi, count_lo, count_hi, n_keys, limit, edge_lo, edge_hi
    )
    resolution = TIE * (1.0 + tl.abs(edge_lo) + tl.abs(lse2))
    settled = settled | (edge_hi - edge_lo <= resolution)
    tl.store(Lo + state, edge_lo, mask=in_range)
    tl.store(Hi + state, edge_hi, mask=in_range)
    tl.store(Done + state, settled.to(tl.int8), mask=in_range)
    tl.store(Budget + state, budget, mask=in_range)


# ---------------------------------------------------------------------------- bracket budgets
@_autotune(
    _SEARCH_CONFIGS,
    key=["D_HEAD", "CAUSAL", "NUM_PS", "len_bucket"],
    short=_SEARCH_SHORT,
    fp32=_SEARCH_FP32,
)
@triton.jit
def _bracket_kernel(
    Q,
    K,
    Lse2,
    Slack,
    Candidates,
    Lo,
    Hi,
    Budget,
    BudgetLow,
    BudgetHigh,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    heads,
    group,
    q_len,
    kv_len,
    scale,
    len_bucket,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    NUM_PS: tl.constexpr,
    EDGES: tl.constexpr,
    COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One pass over the keys against ``EDGES`` candidate thresholds per row, shared by every
    mass p (``Candidates`` ``[rows, EDGES]`` fp32 log2-probabilities, increasing; at most the
    smallest slack's mass lies below the first, every key below the last, whose mass and count are
    the row's total and key count, not counted), then per (row, p): the bracket between the two candidates
    where the mass below crosses the slack (``Lo``, ``Hi``), the budget's bounds (``BudgetLow``,
    ``BudgetHigh``, `_budget_bounds`) and an estimate inside them (``Budget``: the bracket's keys
    taken as spread evenly in log-probability). State ``[rows, NUM_PS]``, rows
    ``pid_bh * q_len + row``. Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, BLOCK_D)
    in_range = rows < q_len
    q = load_rows(
        Q + b * stride_qb + h * stride_qh,
        rows,
        stride_qm,
        cols_d,
        stride_qd,
        q_len,
        D_HEAD,
        BLOCK_D,
        NEGATIVE_ROWS=True,
    )
    K += b * stride_kb + (h // group) * stride_kh
    row_ids = pid_bh.to(tl.int64) * q_len + rows
    lse2 = tl.load(Lse2 + row_ids, mask=in_range, other=0.0)
    n_keys = _row_key_counts(rows, q_len, kv_len, CAUSAL)
    qk_scale = scale * 1.4426950408889634
    cols = tl.arange(0, COLS)  # column c: keys below candidate c (c < EDGES)
    candidates = tl.load(
        Candidates + row_ids[:, None] * EDGES + cols[None, :],
        mask=in_range[:, None] & (cols[None, :] < EDGES),
        other=0.0,
    )

    below_mass = tl.zeros([BLOCK_M, COLS], dtype=tl.float64)
    below_count = tl.zeros([BLOCK_M, COLS], dtype=tl.int32)
    total = tl.zeros([BLOCK_M], dtype=tl.float64)
    last_row = tl.max(tl.where(in_range, rows, -1))
    for n0 in range(0, _key_end(last_row, q_len, kv_len, CAUSAL), BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        qk = _raw_scores(
            q, K, keys, stride_kn, cols_d, stride_kd, kv_len, D_HEAD, BLOCK_D, PRECISION
        )
        keep = visible(rows[:, None], keys[None, :], q_len, kv_len, CAUSAL)
        u = tl.where(keep, qk * qk_scale - lse2[:, None], float("inf"))  # +inf: never below
        p = tl.where(keep, tl.math.exp2(u), 0.0)
        total += tl.sum(p, 1).to(tl.float64)
        tile_mass = tl.zeros([BLOCK_M, COLS], dtype=tl.float32)
        tile_count = tl.zeros([BLOCK_M, COLS], dtype=tl.int32)
        for c in tl.static_range(EDGES - 1):  # the last candidate lies above every key
            edge = tl.sum(tl.where(cols[None, :] == c, candidates, 0.0), 1)
            tile_mass, tile_count = _add_below(u, p, edge, c, cols, tile_mass, tile_count)
        below_mass += tile_mass.to(tl.float64)
        below_count += tile_count
    last = cols[None, :] == EDGES - 1  # every key lies below it: the row's mass and key count
    below_mass = tl.where(last, total[:, None], below_mass)
    below_count = tl.where(last, n_keys[:, None], below_count)

    for i in tl.static_range(NUM_PS):
        limit = tl.load(Slack + i) * total  # B(first) <= limit < B(last) = total
        crossing, mass_lo, mass_hi, count_lo, count_hi = _crossing(
            below_mass, below_count, limit, cols, EDGES
        )
        edge_lo = tl.sum(tl.where(cols[None, :] == crossing[:, None], candidates, 0.0), 1)
        edge_hi = tl.sum(tl.where(cols[None, :] == crossing[:, None] + 1, candidates, 0.0), 1)
        low, high = _budget_bounds(
            mass_lo, mass_hi, count_lo, count_hi, n_keys, limit, edge_lo, edge_hi
        )
        # Estimate: bracket keys spread evenly in log2-probability over [edge_lo, edge_hi);
        # the top keys above t weigh bracket * (2^hi - 2^t) / (2^hi - 2^lo), which must be `need`.
        top = tl.math.exp2(edge_hi.to(tl.float64))
        bottom = tl.math.exp2(edge_lo.to(tl.float64))
        bracket = tl.maximum(mass_hi - mass_lo, 1e-300)
        level = tl.maximum(top - (mass_hi - limit) / bracket * (top - bottom), bottom)
        width = tl.maximum(edge_hi - edge_lo, 1e-30).to(tl.float64)
        share = tl.minimum(tl.maximum((edge_hi - tl.math.log2(level)) / width, 0.0), 1.0)
        guess = (n_keys - count_hi) + tl.math.ceil(share * (count_hi - count_lo)).to(tl.int32)
        guess = tl.minimum(tl.maximum(guess, low), high)
        offsets = row_ids * NUM_PS + i
        tl.store(Lo + offsets, edge_lo, mask=in_range)
        tl.store(Hi + offsets, edge_hi, mask=in_range)
        tl.store(Budget + offsets, guess, mask=in_range)
        tl.store(BudgetLow + offsets, low, mask=in_range)
        tl.store(BudgetHigh + offsets, high, mask=in_range)


# ---------------------------------------------------------------------------- relevant mass
@triton.jit
def _relevant_kernel(
    Q,
    K,
    Lse2,
    Positions,
    Out,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_pb,
    stride_ph,
    stride_pm,
    stride_pr,
    heads,
    group,
    q_len,
    kv_len,
    n_positions,
    scale,
    D_HEAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``Out[row] = sum_r P[row, Positions[row, r]]`` over the visible positions (-1 = padding),
    ``[batch * heads * q_len]`` fp32. Grid ``(cdiv(q_len, BLOCK_M), batch * heads)``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    in_range = rows < q_len
    q = load_rows(
        Q + b * stride_qb + h * stride_qh,
        rows,
        stride_qm,
        cols,
        stride_qd,
        q_len,
        D_HEAD,
        BLOCK_D,
        NEGATIVE_ROWS=True,
    ).to(tl.float32)
    K += b * stride_kb + (h // group) * stride_kh
    offsets = pid_bh.to(tl.int64) * q_len + rows
    lse2 = tl.load(Lse2 + offsets, mask=in_range, other=float("-inf"))
    nonempty = lse2 > float("-inf")
    lse2 = tl.where(nonempty, lse2, 0.0)
    positions = Positions + b * stride_pb + h * stride_ph + rows.to(tl.int64) * stride_pm
    qk_scale = scale * 1.4426950408889634

    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    for r in range(0, n_positions):
        key = tl.load(positions + r * stride_pr, mask=in_range, other=-1)
        keep = nonempty & (key >= 0) & (key < kv_len)
        if CAUSAL:
            keep = keep & causal_visible(rows, key, q_len, kv_len)
        key = tl.where(keep, key, -1)  # load_rows gives zeros for row -1
        k = load_rows(
            K, key, stride_kn, cols, stride_kd, kv_len, D_HEAD, BLOCK_D, NEGATIVE_ROWS=True
        )
        s = tl.sum(q * k.to(tl.float32), 1) * qk_scale
        mass += tl.where(keep, tl.math.exp2(s - lse2), 0.0)
    tl.store(Out + offsets, mass, mask=in_range)


# ---------------------------------------------------------------------------- launchers
def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised buffer (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check_inputs(q: torch.Tensor, k: torch.Tensor) -> None:
    check_qk(q, k)
    check_d_head(q.shape[-1])


def _common_args(q: torch.Tensor, k: torch.Tensor) -> dict:
    d_head = q.shape[-1]
    return dict(
        D_HEAD=d_head,
        BLOCK_D=block_d(d_head),
        PRECISION="ieee",  # fp32 dots in full precision; ignored for fp16/bf16
    )


def _grid(q_len: int, batch_heads: int):
    return lambda meta: (triton.cdiv(q_len, meta["BLOCK_M"]), batch_heads)


def _selection_args(
    selection: Layout | None, q: torch.Tensor, kv_len: int
) -> tuple[list[torch.Tensor], list[int], dict]:
    """Tensors, strides and constexprs of the selection for `_stats_kernel` (dummies without one):
    the dense block mask, token mask (uint8 views) and row threshold, broadcast to (batch, heads)
    with stride 0."""
    batch, heads, q_len = q.shape[:3]
    if selection is None:
        dummy = torch.zeros(1, dtype=torch.uint8, device=q.device)
        return (
            [dummy, dummy, dummy],
            [0] * 11,
            dict(
                HAS_SELECTION=False,
                SEL_BLOCK_Q=MIN_DOT,
                SEL_BLOCK_K=MIN_DOT,
                SEL_CAUSAL=False,
                HAS_TOKEN_MASK=False,
                HAS_THRESHOLD=False,
            ),
        )
    if (selection.q_len, selection.kv_len) != (q_len, kv_len):
        raise ValueError(
            f"selection is for q_len={selection.q_len}, kv_len={selection.kv_len}; "
            f"inputs have q_len={q_len}, kv_len={kv_len}"
        )
    if selection.batch not in (1, batch) or selection.heads not in (1, heads):
        raise ValueError(
            f"selection batch/heads ({selection.batch}, {selection.heads}) must be 1 "
            f"or match q's ({batch}, {heads})"
        )
    if selection.device != q.device:
        raise ValueError(f"selection is on {selection.device}, q on {q.device}")
    blocks = selection.block_mask().view(torch.uint8).expand(batch, heads, -1, -1)
    token_mask = selection.token_mask
    if token_mask is None:
        token_mask, mask_strides = blocks, (0, 0, 0, 0)
    else:
        token_mask = token_mask.view(torch.uint8).expand(batch, heads, -1, -1)
        mask_strides = token_mask.stride()
    threshold = selection.row_threshold
    if threshold is None:
        threshold, threshold_strides = blocks, (0, 0, 0)
    else:
        threshold = threshold.to(torch.float32).expand(batch, heads, -1)
        threshold_strides = threshold.stride()
    return (
        [blocks, token_mask, threshold],
        [*blocks.stride(), *mask_strides, *threshold_strides],
        dict(
            HAS_SELECTION=True,
            SEL_BLOCK_Q=selection.block_q,
            SEL_BLOCK_K=selection.block_k,
            SEL_CAUSAL=selection.causal,
            HAS_TOKEN_MASK=selection.token_mask is not None,
            HAS_THRESHOLD=selection.row_threshold is not None,
        ),
    )


def _row_key_counts_host(
    q_len: int, kv_len: int, causal: bool, device: torch.device
) -> torch.Tensor:
    """``[q_len]`` number of keys each row sees."""
    if not causal:
        return torch.full((q_len,), kv_len, dtype=torch.int64, device=device)
    return (torch.arange(q_len, device=device) + (kv_len - q_len) + 1).clamp(0, kv_len)


def slack_masses(ps: tuple[float, ...]) -> list[float]:
    """Mass that may stay outside the kept keys for each p (the oracle keeps the fewest keys whose
    mass reaches ``p * (1 - 1e-12)``)."""
    return [1.0 - p * (1.0 - SLACK_TOLERANCE) for p in ps]


def bracket_range(
    u_min: torch.Tensor, u_max: torch.Tensor, n_keys: torch.Tensor, slack: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` ``[rows]``: the range ``[max(u_min, log2(min slack / n)), u_max]`` of the
    rows' log2-probabilities that holds every boundary key (below ``log2(min slack / n)`` all
    keys together weigh less than the slack), padded by `RANGE_PAD` against recomputation
    rounding; ``[0, 1]`` for rows without keys. ``u_min``, ``u_max``: the rows' extreme
    log2-probabilities; ``n_keys``: their key counts."""
    nonempty = n_keys > 0
    floor = torch.log2(min(slack) / n_keys.clamp(min=1).to(u_min.dtype))
    lo = torch.maximum(u_min, floor)
    lo = torch.where(nonempty, lo - RANGE_PAD * (1.0 + lo.abs()), torch.zeros_like(lo))
    hi = torch.where(nonempty, u_max + RANGE_PAD * (1.0 + u_max.abs()), torch.ones_like(u_max))
    return lo, hi


def _first_bracket(
    q: torch.Tensor,
    k: torch.Tensor,
    causal: bool,
    slack: list[float],
    lse2: torch.Tensor,
    max2: torch.Tensor,
    min2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` per row (`bracket_range`) in log2-probabilities ``u = s - lse2``."""
    batch, heads, q_len = q.shape[:3]
    n_keys = _row_key_counts_host(q_len, k.shape[2], causal, q.device).repeat(batch * heads)
    return bracket_range(min2 - lse2, max2 - lse2, n_keys, slack)


def _search(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    causal: bool,
    ps: tuple[float, ...],
    lse2: torch.Tensor,
    state: dict[str, torch.Tensor],
    max_passes: int,
) -> int:
    """Search passes on ``state`` (``lo``, ``hi``, ``done``, ``budget``, each
    ``[rows, len(ps)]``, updated in place) over its unsettled (row, p) entries until every one is
    settled or ``max_passes`` ran. Returns the passes run."""
    batch, heads, q_len = q.shape[:3]
    n_ps = len(ps)
    slack = torch.tensor(slack_masses(ps), dtype=torch.float64, device=q.device)
    passes = 0
    while passes < max_passes:
        unsettled = (state["done"] == 0).view(batch * heads, q_len * n_ps)
        entries = true_positions(unsettled, fill=q_len * n_ps)[0]
        if entries.shape[1] == 0:
            break
        _search_kernel[_grid(entries.shape[1], batch * heads)](
            q,
            k,
            lse2,
            slack,
            state["lo"],
            state["hi"],
            state["done"],
            state["budget"],
            entries,
            *q.stride(),
            *k.stride(),
            entries.stride(0),
            entries.shape[1],
            heads,
            heads // k.shape[1],
            q_len,
            k.shape[2],
            scale,
            triton.next_power_of_2(k.shape[2]),
            CAUSAL=causal,
            NUM_PS=n_ps,
            EDGES=SEARCH_EDGES,
            TIE=TIE_WIDTH,
            **_common_args(q, k),
        )
        passes += 1
    return passes


def bracket_candidates(
    lo: torch.Tensor,
    hi: torch.Tensor,
    mean: torch.Tensor,
    spread: torch.Tensor,
    fractions: tuple[float, ...] = BRACKET_RANGE_FRACTIONS,
    z: tuple[float, ...] = BRACKET_Z,
) -> torch.Tensor:
    """``[rows, 2 + len(fractions) + len(z)]`` increasing candidate thresholds (log2-probabilities)
    of the bracket pass, in the dtype of ``lo``: the row's range ends ``lo`` and ``hi``, one at
    each of ``fractions`` of the range, and one at ``mean + z * spread`` for each of ``z`` (the
    mass-weighted mean and standard deviation of the row's log2-probabilities), kept inside
    ``[lo, hi]``. ``lo``, ``hi``, ``mean``, ``spread``: ``[rows]``."""
    span = torch.tensor(fractions, dtype=lo.dtype, device=lo.device)
    zs = torch.tensor(z, dtype=lo.dtype, device=lo.device)
    ranged = lo[:, None] + (hi - lo)[:, None] * span[None, :]
    placed = mean[:, None] + spread[:, None] * zs[None, :]
    placed = torch.minimum(torch.maximum(placed, lo[:, None]), hi[:, None])
    inner = torch.cat([ranged, placed], dim=1).sort(dim=1).values
    return torch.cat([lo[:, None], inner, hi[:, None]], dim=1).contiguous()


def _top_p_budgets(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    causal: bool,
    ps: tuple[float, ...],
    lse2: torch.Tensor,
    max2: torch.Tensor,
    min2: torch.Tensor,
    mean: torch.Tensor,
    spread: torch.Tensor,
    rtol: float | None,
    max_passes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(estimate, low, high)`` ``[rows, len(ps)]`` int32 by one bracket pass (`_bracket_kernel`),
    then, with ``rtol``, search passes over the (row, p) whose interval is wider than ``rtol``
    times the estimate, which close (exact) or narrow them (``rtol = 0``: the exact budgets)."""
    batch, heads, q_len = q.shape[:3]
    n_ps = len(ps)
    lo, hi = _first_bracket(q, k, causal, slack_masses(ps), lse2, max2, min2)
    candidates = bracket_candidates(lo, hi, mean, spread).float()
    rows = lo.shape[0]
    state = dict(
        lo=_empty((rows, n_ps), torch.float32, q.device),
        hi=_empty((rows, n_ps), torch.float32, q.device),
        budget=_empty((rows, n_ps), torch.int32, q.device),
    )
    low = _empty((rows, n_ps), torch.int32, q.device)
    high = _empty((rows, n_ps), torch.int32, q.device)
    _bracket_kernel[_grid(q_len, batch * heads)](
        q,
        k,
        lse2,
        torch.tensor(slack_masses(ps), dtype=torch.float64, device=q.device),
        candidates,
        state["lo"],
        state["hi"],
        state["budget"],
        low,
        high,
        *q.stride(),
        *k.stride(),
        heads,
        heads // k.shape[1],
        q_len,
        k.shape[2],
        scale,
        triton.next_power_of_2(k.shape[2]),
        CAUSAL=causal,
        NUM_PS=n_ps,
        EDGES=BRACKET_EDGES,
        COLS=triton.next_power_of_2(BRACKET_EDGES),
        **_common_args(q, k),
    )
    if rtol is not None:
        wide = (high - low).float() > rtol * state["budget"].float()
        state["done"] = (~wide).to(torch.int8)
        passes = _search(q, k, scale, causal, ps, lse2, state, max_passes)
        log.debug("top-p search: %d passes", passes)
        closed = wide & (state["done"] != 0)
        low = torch.where(closed, state["budget"], low)
        high = torch.where(closed, state["budget"], high)
        state["budget"] = torch.minimum(torch.maximum(state["budget"], low), high)
    return state["budget"], low, high


def _relevant_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    causal: bool,
    lse2: torch.Tensor,
    relevant_positions: torch.Tensor,
) -> torch.Tensor:
    """``[batch * heads * q_len]`` fp32 attention mass on the relevant positions."""
    batch, heads, q_len = q.shape[:3]
    positions = relevant_positions
    if positions.dim() == 3:
        positions = positions.unsqueeze(1)
    if (
        positions.dim() != 4
        or positions.shape[0] != batch
        or positions.shape[2] != q_len
        or positions.shape[1] not in (1, heads)
    ):
        raise ValueError(
            f"relevant_positions must be [batch={batch}, q_len={q_len}, R] or "
            f"[batch, heads|1, q_len, R], got {tuple(relevant_positions.shape)}"
        )
    if positions.dtype not in (torch.int64, torch.int32) or positions.device != q.device:
        raise ValueError("relevant_positions must be an int64/int32 tensor on q's device")
    if positions.numel() and int(positions.max()) >= k.shape[2]:
        raise ValueError(f"relevant_positions must be < kv_len={k.shape[2]} (or -1 padding)")
    positions = positions.expand(batch, heads, -1, -1)
    out = _empty((batch * heads * q_len,), torch.float32, q.device)
    _relevant_kernel[(triton.cdiv(q_len, _RELEVANT_ROWS), batch * heads)](
        q,
        k,
        lse2,
        positions,
        out,
        *q.stride(),
        *k.stride(),
        *positions.stride(),
        heads,
        heads // k.shape[1],
        q_len,
        k.shape[2],
        positions.shape[3],
        scale,
        CAUSAL=causal,
        BLOCK_M=_RELEVANT_ROWS,
        **{key: value for key, value in _common_args(q, k).items() if key != "PRECISION"},
    )
    return out


def row_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    ps: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99),
    selection: Layout | None = None,
    relevant_positions: torch.Tensor | None = None,
    budgets: Budgets = "exact",
    budget_rtol: float | None = None,
    max_search_passes: int = MAX_SEARCH_PASSES,
) -> RowStats:
    """Per-row statistics of softmax(scale q k^T) (optionally causal, end-aligned) by streaming
    kernels; the same fields, shapes and dtypes as `kernels.reference.row_stats`.

    Args:
        q: ``[batch, heads, q_len, d_head]``; k: ``[batch, kv_heads, kv_len, d_head]`` (same dtype,
            fp16/bf16/fp32, any strides).
        scale: score scale, default ``1 / sqrt(d_head)``.
        causal: end-aligned causal mask (rows with no visible key get lse/max -inf, entropy 0,
            budgets 0, masses 0).
        ps: masses in (0, 1] for the top-p budgets; ``()`` skips them (the search passes cost
            most of this function's time: without them it is about one attention forward).
        selection: a `Layout` whose kept entries' mass is returned (``selection_mass``).
        relevant_positions: ``[batch, q_len, R]`` or ``[batch, heads|1, q_len, R]`` int key
            positions (-1 = padding) whose mass is returned (``relevant_mass``).
        budgets: ``"exact"`` (the bracket pass, then search passes) or ``"bracket"``: the one
            pass against `BRACKET_EDGES` candidate thresholds per row gives an estimate and an
            interval ``[top_p_budget_low, top_p_budget_high]`` that holds the exact budget
            (module docstring, "Bracket pass").
        budget_rtol: bracket mode only: search passes refine the (row, p) whose interval is wider
            than this times the estimate (``0``: every open one); ``None`` refines nothing.
        max_search_passes: cap on top-p search passes ((row, p) unsettled by then get the
            equal-probability estimate of their last bracket).
    """
    ps = tuple(float(p) for p in ps)
    reference.check_ps(ps)
    reference.check_budgets(budgets, budget_rtol)
    _check_inputs(q, k)
    if max_search_passes < 1:
        raise ValueError(f"max_search_passes must be >= 1, got {max_search_passes}")
    batch, heads, q_len, d_head = q.shape
    kv_len = k.shape[2]
    scale = reference.resolve_scale(scale, d_head)
    rows = batch * heads * q_len
    lse2, max2, min2, entropy, spread, selection_mass = (
        _empty((rows,), torch.float32, q.device) for _ in range(6)
    )
    sel_tensors, sel_strides, sel_constexprs = _selection_args(selection, q, kv_len)
    _stats_kernel[_grid(q_len, batch * heads)](
        q,
        k,
        lse2,
        max2,
        min2,
        entropy,
        spread,
        selection_mass,
        *sel_tensors,
        *q.stride(),
        *k.stride(),
        *sel_strides,
        heads,
        heads // k.shape[1],
        q_len,
        kv_len,
        scale,
        triton.next_power_of_2(kv_len),
        CAUSAL=causal,
        SPREAD=bool(ps),
        **sel_constexprs,
        **_common_args(q, k),
    )
    low = high = None
    if ps:
        mean = -entropy / LN2  # E_p[log2 p]
        rtol = budget_rtol if budgets == "bracket" else 0.0
        estimate, low, high = _top_p_budgets(
            q, k, scale, causal, ps, lse2, max2, min2, mean, spread, rtol, max_search_passes
        )
        if budgets == "exact":
            low = high = None
    else:
        estimate = _empty((rows, 0), torch.int32, q.device)
    relevant = None
    if relevant_positions is not None:
        relevant = _relevant_mass(q, k, scale, causal, lse2, relevant_positions)
    shape = (batch, heads, q_len)
    return RowStats(
        lse=(lse2 * LN2).view(shape),
        max_score=(max2 * LN2).view(shape),
        entropy=entropy.view(shape),
        top_p_budget=estimate.view(*shape, len(ps)),
        ps=ps,
        selection_mass=selection_mass.view(shape) if selection is not None else None,
        relevant_mass=relevant.view(shape) if relevant is not None else None,
        top_p_budget_low=low.view(*shape, len(ps)) if low is not None else None,
        top_p_budget_high=high.view(*shape, len(ps)) if high is not None else None,
    )

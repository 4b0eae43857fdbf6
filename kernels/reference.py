"""Readable torch oracles for every kernel. They materialise the full score matrix, so they are for
tests, small inputs and CPU use; pass ``compute_dtype=torch.float64`` for a high-precision oracle.

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k, v: [batch, kv_heads, kv_len, d_head]`` with
``heads % kv_heads == 0`` (grouped-query attention: query head ``h`` reads kv head
``h // (heads // kv_heads)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from kernels.layout import Layout, causal_token_mask, num_blocks, pool_to_blocks


def default_scale(d_head: int) -> float:
    return 1.0 / math.sqrt(d_head)


def resolve_scale(scale: float | None, d_head: int) -> float:
    """``scale`` as a float, `default_scale` when None; raises ``ValueError`` unless it is finite
    and > 0 (the Triton kernels mask dropped scores with -inf before scaling them)."""
    if scale is None:
        return default_scale(d_head)
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return value


def repeat_kv(kv: torch.Tensor, heads: int) -> torch.Tensor:
    """``[batch, kv_heads, len, d]`` -> ``[batch, heads, len, d]`` for grouped-query attention."""
    kv_heads = kv.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    return kv.repeat_interleave(heads // kv_heads, dim=1)


def scaled_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``scale * q @ k^T`` as ``[batch, heads, q_len, kv_len]`` in ``compute_dtype``."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    k = repeat_kv(k, q.shape[1])
    return torch.einsum("bhid,bhjd->bhij", q.to(compute_dtype), k.to(compute_dtype)) * scale


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim restricted to ``mask``; returns ``(probs, lse)``.

    A row with no kept entry gets probabilities 0 and lse -inf (never NaN).
    """
    masked = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(masked, dim=-1)  # -inf on empty rows
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(masked - safe_lse.unsqueeze(-1))  # exp(-inf) = 0 on masked entries
    return probs, lse


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted to the entries ``layout`` keeps.

    Returns ``out`` ``[batch, heads, q_len, d_head]`` in ``q.dtype`` and ``lse``
    ``[batch, heads, q_len]`` float32 (natural log of the softmax normaliser of the scaled scores).
    """
    check_attention_inputs(q, k, v, layout)
    scores = scaled_scores(q, k, scale, compute_dtype)
    probs, lse = masked_softmax(scores, layout.to_dense(scores))
    out = torch.einsum("bhij,bhjd->bhid", probs, repeat_kv(v, q.shape[1]).to(compute_dtype))
    return out.to(q.dtype), lse.to(torch.float32)


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout):
    """Raise ``ValueError`` when q/k/v and the layout do not fit together."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-d: [batch, heads, len, d_head]")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and d_head")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k/v heads ({k.shape[1]})")
    if (layout.q_len, layout.kv_len) != (q.shape[2], k.shape[2]):
        raise ValueError(
            f"layout is for q_len={layout.q_len}, kv_len={layout.kv_len}; "
            f"inputs have q_len={q.shape[2]}, kv_len={k.shape[2]}"
        )
    if layout.batch not in (1, q.shape[0]) or layout.heads not in (1, q.shape[1]):
        raise ValueError(
            f"layout batch/heads ({layout.batch}, {layout.heads}) must be 1 or match q's "
            f"({q.shape[0]}, {q.shape[1]})"
        )


# ---------------------------------------------------------------------------- row statistics
@dataclass(frozen=True)
class RowStats:
    """Per query-row statistics of the softmax attention distribution, ``[batch, heads, q_len]``.

    Attributes:
        lse: log of the softmax normaliser of the scaled scores (-inf for a row with no key).
        max_score: largest scaled score in the row (-inf for an empty row).
        entropy: Shannon entropy of the attention weights, in nats.
        top_p_budget: ``[batch, heads, q_len, len(ps)]`` int32: smallest number of keys whose weights
            sum to at least ``ps[i]`` (last dimension 0 for ``ps=()``).
        ps: the masses the budgets are for.
        selection_mass: weight inside a given layout's entries, or None.
        relevant_mass: weight on given relevant positions, or None.
        top_p_budget_low, top_p_budget_high: with ``budgets="bracket"``, bounds
            ``[batch, heads, q_len, len(ps)]`` int32 that hold the exact budget (``top_p_budget``
            is then an estimate between them); None for exact budgets.
    """

    lse: torch.Tensor
    max_score: torch.Tensor
    entropy: torch.Tensor
    top_p_budget: torch.Tensor
    ps: tuple[float, ...]
    selection_mass: torch.Tensor | None = None
    relevant_mass: torch.Tensor | None = None
    top_p_budget_low: torch.Tensor | None = None
    top_p_budget_high: torch.Tensor | None = None

    @property
    def max_weight(self) -> torch.Tensor:
        """Largest attention weight of each row (0 for an empty row)."""
        return torch.nan_to_num(torch.exp(self.max_score - self.lse), nan=0.0)


def attention_mask(q_len: int, kv_len: int, causal: bool, device: torch.device) -> torch.Tensor:
    """``[q_len, kv_len]`` bool: all True, or the end-aligned causal mask."""
    if causal:
        return causal_token_mask(q_len, kv_len, device)
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device)


BUDGET_TOLERANCE = 1e-12
"""Relative tolerance on the target mass of a top-p budget (compared in float64)."""


def top_p_budget(probs: torch.Tensor, p: float) -> torch.Tensor:
    """``[..., n]`` weights -> ``[...]`` int32: fewest keys whose weights sum to at least ``p`` times
    the row's total (by sort; 0 for a row of total 0).

    The weights are accumulated in float64 and a prefix reaches the target within a relative
    `BUDGET_TOLERANCE`, so ``n`` equal weights need exactly ``ceil(p n)`` keys (whatever their
    rounding), and with ``p = 1`` the budget ends where the remaining keys weigh less than that
    tolerance of the row (the streaming kernel compares the same way)."""
    ordered = probs.double().sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1)
    total = cumulative[..., -1:]
    # Keys before the first prefix that reaches the target, plus that key.
    budget = (cumulative < total * (p * (1 - BUDGET_TOLERANCE))).sum(-1) + 1
    return torch.where(total.squeeze(-1) > 0, budget, torch.zeros_like(budget)).to(torch.int32)


def gather_relevant_mass(probs: torch.Tensor, relevant_positions: torch.Tensor) -> torch.Tensor:
    """Weight on the relevant positions of each row.

    ``probs`` ``[batch, heads, q_len, kv_len]``; ``relevant_positions`` ``[batch, q_len, R]`` or
    ``[batch, heads, q_len, R]`` int64, padded with -1 (as in ``toy_tasks.Batch``).
    """
    positions = relevant_positions
    if positions.dim() == 3:
        positions = positions.unsqueeze(1)
    positions = positions.expand(probs.shape[0], probs.shape[1], *positions.shape[2:])
    valid = positions >= 0
    picked = probs.gather(-1, positions.clamp(min=0))
    return (picked * valid).sum(-1)


Budgets = Literal["exact", "bracket"]
BUDGETS = ("exact", "bracket")


def check_budgets(budgets: str, budget_rtol: float | None) -> None:
    """``budgets`` one of `BUDGETS`; ``budget_rtol`` None, or a number >= 0 in bracket mode."""
    if budgets not in BUDGETS:
        raise ValueError(f"budgets must be one of {BUDGETS}, got {budgets!r}")
    if budget_rtol is not None and (budgets != "bracket" or not budget_rtol >= 0):
        raise ValueError(
            f"budget_rtol must be None or >= 0 with budgets='bracket', got {budget_rtol!r}"
        )


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
    budgets: Budgets = "exact",
    budget_rtol: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> RowStats:
    """Statistics of the dense (optionally causal) attention distribution of every query row, or,
    with ``restrict``, of the attention over the entries that layout keeps (the softmax that
    `attention` computes with it: what a sparse method's model attends with). The oracle's
    budgets are exact in both modes; ``budgets="bracket"`` adds the interval ``[k, k]``."""
    check_ps(ps)
    check_budgets(budgets, budget_rtol)
    scores = scaled_scores(q, k, scale, compute_dtype)
    mask = attention_mask(q.shape[2], k.shape[2], causal, q.device).expand_as(scores)
    if restrict is not None:
        mask = mask & restrict.to_dense(scores)
    probs, lse = masked_softmax(scores, mask)
    max_score = scores.masked_fill(~mask, float("-inf")).amax(-1)
    plogp = torch.where(probs > 0, probs * torch.log(probs), torch.zeros_like(probs))
    if ps:
        top_p = torch.stack([top_p_budget(probs, p) for p in ps], dim=-1)
    else:
        top_p = torch.zeros(*lse.shape, 0, dtype=torch.int32, device=lse.device)
    selection_mass = None
    if selection is not None:
        selection_mass = (probs * selection.to_dense(scores)).sum(-1).to(torch.float32)
    relevant_mass = None
    if relevant_positions is not None:
        relevant_mass = gather_relevant_mass(probs, relevant_positions).to(torch.float32)
    return RowStats(
        lse=lse.to(torch.float32),
        max_score=max_score.to(torch.float32),
        entropy=(-plogp.sum(-1)).to(torch.float32),
        top_p_budget=top_p,
        ps=tuple(ps),
        selection_mass=selection_mass,
        relevant_mass=relevant_mass,
        top_p_budget_low=top_p if budgets == "bracket" else None,
        top_p_budget_high=top_p if budgets == "bracket" else None,
    )


def check_ps(ps: tuple[float, ...]) -> None:
    """``ps`` must hold masses in (0, 1]; empty means "no top-p budgets"."""
    if any(not 0.0 < p <= 1.0 for p in ps):
        raise ValueError(f"ps must be masses in (0, 1] (or empty: no budgets), got {ps}")


def top_p_threshold(
    scores: torch.Tensor,
    p: float,
    mask: torch.Tensor | None = None,
    *,
    tolerance: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Score threshold per row keeping the smallest set of keys whose softmax weight reaches ``p``
    (see `separating_threshold` for ties and ``tolerance``).

    ``scores`` ``[..., n]`` scaled scores; ``mask`` optional ``[..., n]`` bool of the keys that take
    part. Returns ``[...]`` in the scores' dtype (+inf for a row with no key).
    """
    check_ps((p,))
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    probs, _ = masked_softmax(scores.double(), mask)
    return separating_threshold(scores, top_p_budget(probs, p), mask, tolerance=tolerance)


def top_k_threshold(
    scores: torch.Tensor,
    k: int,
    mask: torch.Tensor | None = None,
    *,
    tolerance: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Score threshold per row keeping the ``k`` largest scores (rows with fewer than ``k`` keys
    keep them all; see `separating_threshold` for ties and ``tolerance``). ``scores`` ``[..., n]``
    -> ``[...]`` in the scores' dtype."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return separating_threshold(
        scores, torch.full(scores.shape[:-1], k, device=scores.device), mask, tolerance=tolerance
    )


# ---------------------------------------------------------------------------- threshold selections
DOT_UNIT_ROUNDOFF = 2.0**-23
"""Twice fp32's unit roundoff: the error of one fp32 operation, also where an accumulator
truncates instead of rounding (tensor cores)."""
TF32_INPUT_ERROR = 2.0**-9
"""Relative error of one product of TF32-rounded inputs (10-bit mantissas, truncation allowed)."""


def score_tolerance(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``[batch, heads, q_len]`` float32: how far two computations of the scaled scores
    ``scale * q_i . k_j`` of row ``i`` may differ, for any order of summation.

    Each computation forms the ``d`` products of ``q`` and ``k`` (exactly for fp16 / bf16 inputs, with
    one rounding for fp32, or with TF32 inputs where CUDA matmuls may use TF32), adds them in fp32
    in any order and scales the sum: its error is at most ``(input error + (d + 2) u) * scale *
    sum_t |q_it k_jt|`` with ``u`` = `DOT_UNIT_ROUNDOFF`, and ``sum_t |q_it k_jt| <= ||q_i|| *
    max_j ||k_j||``. Two computations differ by at most twice that. The kernels recompute scores
    their own way (a forward tile ``q k^T``, a backward tile ``k q^T``, the reference an einsum), so a
    threshold that keeps every score farther than this from it keeps the same keys in all of them.
    ``q``: ``[batch, heads, q_len, d]``; ``k``: ``[batch, kv_heads, kv_len, d]``.
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    tf32 = q.is_cuda and torch.backends.cuda.matmul.allow_tf32
    relative = (q.shape[-1] + 2) * DOT_UNIT_ROUNDOFF + (TF32_INPUT_ERROR if tf32 else 0.0)
    key_norm = repeat_kv(k.float().norm(dim=-1, keepdim=True), q.shape[1]).amax(dim=(-2, -1))
    return 2 * relative * scale * q.float().norm(dim=-1) * key_norm.unsqueeze(-1)


def separating_threshold(
    scores: torch.Tensor,
    count: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    tolerance: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Threshold per row keeping (``scores >= threshold``) the ``count`` largest scores, with every
    score lying farther than ``tolerance`` from the threshold.

    The rule: sort the row's scores (the keys of ``mask``) in descending order and cut after the
    ``count``-th at the first gap ``s_(j) - s_(j+1)`` wider than ``2 * tolerance`` (``j >= count``);
    the threshold is the gap's midpoint. So scores tied with the ``count``-th, or within
    ``2 * tolerance`` of it (in a chain), are kept with it; with ``tolerance`` from
    `score_tolerance` every kernel then keeps exactly these keys, whatever its summation order,
    and with ``tolerance = 0`` only exact ties are added. A row keeping every key gets -inf, a row
    keeping none (``count = 0`` or no key in ``mask``) +inf.

    Args:
        scores: ``[..., n]`` scaled scores (float32 or float64).
        count: ``[...]`` integer number of keys to keep (clipped to the keys in ``mask``).
        mask: optional ``[..., n]`` bool of the keys that take part.
        tolerance: ``[...]`` or a float >= 0.

    Returns:
        ``[...]`` thresholds in the scores' dtype (a midpoint that this dtype cannot store strictly
        inside its gap does not count as a cut).
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    ordered = scores.sort(dim=-1, descending=True).values
    available = torch.isfinite(ordered).sum(-1)
    count = torch.minimum(count.to(available.device, torch.int64), available)
    following = torch.nn.functional.pad(ordered[..., 1:], (0, 1), value=float("-inf"))
    # Candidate thresholds: each gap's midpoint as the scores' dtype stores it; -inf below the last.
    middle = torch.where(torch.isinf(following), following, (ordered + following) / 2)
    tolerance = torch.as_tensor(tolerance, dtype=torch.float64, device=ordered.device)
    if tolerance.dim():
        tolerance = tolerance.unsqueeze(-1)
    wide = (ordered.double() - middle.double() > tolerance) & (
        middle.double() - following.double() > tolerance
    )  # False between two -inf (NaN)
    positions = torch.arange(ordered.shape[-1], device=ordered.device)
    allowed = wide & (positions >= (count - 1).unsqueeze(-1))
    cut = torch.where(allowed, positions, ordered.shape[-1] - 1).amin(-1, keepdim=True)
    threshold = middle.gather(-1, cut).squeeze(-1)
    return torch.where(count > 0, threshold, torch.full_like(threshold, float("inf")))


# ---------------------------------------------------------------------------- block scores
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
    ``[batch, heads, n_q_blocks, n_kv_blocks]`` float32; blocks with no causally visible entry are
    -inf. Partial edge blocks average their real positions only."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    pooled_q = mean_pool(q.float(), block_q)
    pooled_k = mean_pool(repeat_kv(k, q.shape[1]).float(), block_k)
    scores = torch.einsum("bhid,bhjd->bhij", pooled_q, pooled_k) * scale
    if causal:
        visible = pool_to_blocks(
            causal_token_mask(q.shape[2], k.shape[2], q.device), block_q, block_k
        )
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """``[batch, heads, len, d]`` -> ``[batch, heads, n_blocks, d]`` mean over each block's rows."""
    length = x.shape[2]
    padded = torch.nn.functional.pad(x, (0, 0, 0, num_blocks(length, block) * block - length))
    sums = padded.unflatten(2, (-1, block)).sum(3)
    sizes = torch.clamp(length - torch.arange(sums.shape[2], device=x.device) * block, max=block)
    return sums / sizes.to(x.dtype).unsqueeze(-1)


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

    With stride S: ``R[m, n] = sum_{t<S} q[m*S + S-1-t] . k[n*S + t]`` (one antidiagonal per S x S
    tile), scaled by ``scale / S``, causally masked at stride resolution (tile (m, n) visible iff
    n <= m + offset, offset = (kv_len - q_len) / S), softmax along each row of R, then summed over each
    ``(block/S) x (block/S)`` region. Lengths are zero-padded to a multiple of ``block``; padded key
    tiles are excluded from the softmax and strided query rows made only of padding add nothing.
    """
    if stride < 1 or block % stride:
        raise ValueError(f"stride must divide block ({block}), got {stride}")
    scale = default_scale(q.shape[-1]) if scale is None else scale
    q_len, kv_len = q.shape[2], k.shape[2]
    k = repeat_kv(k, q.shape[1])
    q_pad = num_blocks(q_len, block) * block
    k_pad = num_blocks(kv_len, block) * block
    qf = torch.nn.functional.pad(q.float(), (0, 0, 0, q_pad - q_len))
    kf = torch.nn.functional.pad(k.float(), (0, 0, 0, k_pad - kv_len))
    # Reversed-within-tile queries against in-order keys: sum over t of q[mS+S-1-t] . k[nS+t].
    q_tiles = qf.unflatten(2, (-1, stride)).flip(3)  # [b, h, M, S, d]
    k_tiles = kf.unflatten(2, (-1, stride))  # [b, h, N, S, d]
    strided = torch.einsum("bhmtd,bhntd->bhmn", q_tiles, k_tiles) * (scale / stride)
    n_q_tiles, n_k_tiles = strided.shape[2:]
    real_keys = torch.arange(n_k_tiles, device=q.device) * stride < kv_len
    visible = real_keys.expand(n_q_tiles, n_k_tiles)
    if causal:
        offset = (kv_len - q_len) // stride
        tile_rows = torch.arange(n_q_tiles, device=q.device).unsqueeze(1)
        visible = visible & (
            torch.arange(n_k_tiles, device=q.device).unsqueeze(0) <= tile_rows + offset
        )
    probs, _ = masked_softmax(strided, visible.expand_as(strided))
    # Strided query rows made only of padding carry no mass (as in XAttention).
    real_rows = torch.arange(n_q_tiles, device=q.device) * stride < q_len
    probs = probs * real_rows.unsqueeze(-1)
    per_block = block // stride
    return probs.unflatten(2, (-1, per_block)).unflatten(4, (-1, per_block)).sum((3, 5))


# ---------------------------------------------------------------------------- block selection
def select_top_k_blocks(block_scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., n_q_blocks, n_kv_blocks]`` scores -> bool mask keeping the ``k`` best finite blocks
    per row."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = block_scores.topk(min(k, block_scores.shape[-1]), dim=-1).indices
    mask = torch.zeros_like(block_scores, dtype=torch.bool).scatter_(-1, top, True)
    return mask & torch.isfinite(block_scores)


def select_cumulative_blocks(
    block_scores: torch.Tensor, tau: float, *, keep_first_and_diagonal: bool = True
) -> torch.Tensor:
    """XAttention's threshold rule: per block row keep (optionally) the first and the diagonal block,
    then blocks in descending score until the kept scores sum to ``tau`` x the row total.

    ``block_scores`` ``[..., n_q_blocks, n_kv_blocks]`` non-negative (e.g. antidiagonal scores);
    -inf / 0 marks invisible blocks. Returns a bool mask of the same shape.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must lie in (0, 1], got {tau}")
    scores = torch.nan_to_num(block_scores.float(), neginf=0.0).clamp(min=0.0)
    n_rows, n_cols = scores.shape[-2:]
    forced = torch.zeros_like(scores, dtype=torch.bool)
    if keep_first_and_diagonal:
        forced[..., :, 0] = True
        diagonal = torch.clamp(
            torch.arange(n_rows, device=scores.device) + (n_cols - n_rows), 0, n_cols - 1
        )
        forced[..., torch.arange(n_rows, device=scores.device), diagonal] = True
    total = scores.sum(-1, keepdim=True)
    # Forced blocks count first, then the others in descending order.
    ranking = torch.where(forced, torch.full_like(scores, float("inf")), scores)
    order = ranking.argsort(dim=-1, descending=True)
    ordered = scores.gather(-1, order)
    before = ordered.cumsum(-1) - ordered  # mass kept before adding each block
    keep_sorted = (before < tau * total) | forced.gather(-1, order)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return keep & (torch.isfinite(block_scores) | forced)

"""Softmax stability and Lipschitz metrics of attention (semantic-focus theory, arXiv 2506.14095).

Per query row, with probabilities ``p = softmax(s)`` over the keys the row attends to:

* **Softmax Jacobian** ``J = diag(p) - p p^T`` (`softmax_jacobian`). ``J`` is symmetric positive
  semi-definite (``v^T J v = Var_p(v)``), so ``||J||_2`` is its largest eigenvalue; it is found
  exactly without forming ``J`` from the secular equation of the rank-one update: the largest
  eigenvalue is the root of ``sum_i p_i^2 / (p_i - lambda) = 1`` in ``[p_(2), p_(1)]`` (the two
  largest weights; eigenvalues interlace), by bisection (`jacobian_spectral_norm`). ``||J||_2 <=
  1/2``; a uniform row of ``n`` gives ``1/n``, a one-hot row 0. ``||J||_F^2 = sum p^2 - 2 sum p^3 +
  (sum p^2)^2`` (`jacobian_frobenius_norm`). The sparse (top-k / top-p renormalised) softmax is the
  softmax restricted to the selection: the same functions of `sparse_probs`.
* **Margins** of a selection: the top-k gap ``s_(k) - s_(k+1)``; the smallest inf-norm perturbation
  of the scores that changes the top-k set is ``gap / 2`` (`top_k_margin`); `top_p_margin` derives
  the top-p one; `flip_rate` measures how often the selected set changes under Gaussian noise on
  q and k.
* **Lipschitz constant** of the attention map ``X -> Attn(X)`` (`AttentionWeights`): power
  iteration on ``J_f^T J_f`` through ``torch.func.jvp`` / ``vjp`` (`lipschitz_estimate`), and the
  upper bound `analytic_bound` on the same weights (derivation in its docstring).
* **Semantic-focus quantities** (`focus_quantities`): per row the dispersions of the full and the
  sparse softmax, the separation of the selection, ``c1``, ``c2`` and the sink counts ``beta``;
  `topk_stability_conditions` evaluates the paper's two sufficient conditions for top-k to have a
  smaller stability constant than full attention, as written in the public code (rithram/spartan).
* **Whole model** (`model_lipschitz_estimate`): the Lipschitz estimate of a toy model from its
  residual stream after the embedding to its logits (outputs).
* **Streaming** (`row_stability_from_qk`): per-row ``||J||_2``, ``||J||_F`` and the top-k margin
  from q and k in chunks of query rows (memory ``O(chunk x kv_len)``).
* **Captures**: `row_stability` of a layer captured by `workbench.capture` (what training logs
  with the ``stability`` evaluation metric, as per layer and head means over the scored positions) and
  `workbench.runs.attention_series` with ``group="stability"`` (curves from a ``metrics.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from kernels.layout import Layout, causal_token_mask
from kernels.reference import default_scale, masked_softmax, scaled_scores, top_p_budget
from workbench.capture import LayerCapture
from workbench.sparse.base import SparseMethod, visible

STABILITY_TOP_K = 5
"""k of the logged top-k margin (the semantic-focus paper's k)."""
BISECTION_STEPS = 64
ROW_STATISTICS = ("jacobian_norm", "method_jacobian_norm", "top_k_margin")
"""What `row_stability` computes (and training logs) per layer and head."""


# ---------------------------------------------------------------------------- softmax Jacobian
def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """``J = diag(p) - p p^T``: ``p`` ``[..., n]`` probabilities -> ``[..., n, n]``."""
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def jacobian_matvec(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J v = p * v - p (p . v)`` without forming ``J``: ``p``, ``v`` ``[..., n]`` -> ``[..., n]``."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


def jacobian_spectral_norm(
    p: torch.Tensor, method: Literal["secular", "eigh", "power"] = "secular"
) -> torch.Tensor:
    """``||J||_2`` per row: ``p`` ``[..., n]`` -> ``[...]`` (float64).

    ``"secular"`` (exact, O(n) memory, any length), ``"eigh"`` (forms ``J``: short rows) or
    ``"power"`` (power iteration with `jacobian_matvec`: a check of the secular root)."""
    p = p.double()
    if method == "eigh":
        return torch.linalg.eigvalsh(softmax_jacobian(p))[..., -1].clamp(min=0.0)
    if method == "power":
        return _power_norm(p)
    return _secular_root(p)


def _secular_root(p: torch.Tensor) -> torch.Tensor:
    """Largest root of ``sum_i p_i^2 / (p_i - lambda) = 1`` in ``[p_(2), p_(1)]`` (bisection);
    ``p_(1)`` itself when the largest weight is tied."""
    top = p.topk(min(2, p.shape[-1]), dim=-1).values
    high = top[..., 0]
    low = top[..., -1] if p.shape[-1] > 1 else torch.zeros_like(high)
    low = torch.where(low < high, low, high)
    squares = p.square()
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        gaps = p - middle.unsqueeze(-1)
        terms = torch.where(squares > 0, squares / gaps.where(gaps != 0, 1.0), 0.0)
        above = terms.sum(-1) > 1  # the secular function increases on (p_(2), p_(1))
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return (low + high) / 2


def _power_norm(p: torch.Tensor, iterations: int = 500) -> torch.Tensor:
    """Rayleigh quotient of ``J`` after power iteration from a fixed start (``J`` is PSD)."""
    v = p - p.mean(-1, keepdim=True) + torch.linspace(0.5, 1.0, p.shape[-1], dtype=p.dtype) * 1e-3
    for _ in range(iterations):
        v = jacobian_matvec(p, v)
        v = v / v.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
    return (v * jacobian_matvec(p, v)).sum(-1)


def jacobian_frobenius_norm(p: torch.Tensor) -> torch.Tensor:
    """``||J||_F = sqrt(sum p^2 - 2 sum p^3 + (sum p^2)^2)``: ``[..., n]`` -> ``[...]`` (float64)."""
    p = p.double()
    s2, s3 = p.square().sum(-1), p.pow(3).sum(-1)
    return (s2 - 2 * s3 + s2.square()).clamp(min=0.0).sqrt()


def sparse_probs(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax renormalised over the kept keys (0 elsewhere): ``[..., n]`` -> ``[..., n]``. Its
    Jacobian w.r.t. the kept scores is ``softmax_jacobian`` restricted to the selection (the
    selection is locally constant while its margin is positive)."""
    return masked_softmax(scores.double(), keep)[0]


# ---------------------------------------------------------------------------- margins
def top_k_gap(scores: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``s_(k) - s_(k+1)`` over the visible keys: ``[..., n]`` -> ``[...]`` (+inf where a row has
    at most ``k`` visible keys; 0 for a tie at the boundary)."""
    masked = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    if k >= scores.shape[-1]:
        return torch.full(scores.shape[:-1], float("inf"), dtype=scores.dtype, device=scores.device)
    top = masked.topk(k + 1, dim=-1).values
    gap = top[..., k - 1] - top[..., k]
    return torch.where(torch.isinf(top[..., k]), torch.full_like(gap, float("inf")), gap)


def top_k_margin(scores: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Smallest ``||delta||_inf`` for which the top-k set of ``scores + delta`` differs: ``gap/2``.

    Below it every selected score stays above ``s_(k) - eps > s_(k+1) + eps`` (the unselected
    bound); at it, lowering ``s_(k)`` and raising ``s_(k+1)`` by ``gap/2`` ties them and the tie is
    kept (`kernels.reference.top_k_threshold`), so the set grows. ``[..., n]`` -> ``[...]``."""
    return top_k_gap(scores, k, mask) / 2


def top_p_margin(scores: torch.Tensor, p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Smallest ``||delta||_inf`` changing the top-p set (`kernels.reference.top_p_threshold`):
    ``[..., n]`` -> ``[...]`` (float64).

    With ``m`` the budget and ``a_j`` the softmax mass of the ``j`` largest scores, the set of
    ``scores + delta`` (``||delta||_inf <= eps``) stays the same unless one of three events occurs,
    each reachable at exactly the stated ``eps`` (the mass of a set ``T`` of mass ``a`` ranges over
    ``a / (a + (1 - a) e^{-+2 eps})`` by raising ``T`` and lowering the rest, or the reverse):

    * order across the boundary: ``eps = (s_(m) - s_(m+1)) / 2``;
    * the budget shrinks: the top ``m - 1`` reach ``p``: ``eps = ln(p (1 - a) / ((1 - p) a)) / 2``,
      ``a = a_{m-1}`` (the largest mass of any ``m - 1`` keys);
    * the budget grows: the top ``m`` fall below ``p``: ``eps = ln(a (1 - p) / ((1 - a) p)) / 2``,
      ``a = a_m`` (+inf when ``a_m = 1``).

    The margin is the smallest of the three."""
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    scores = scores.double().masked_fill(~mask, float("-inf"))
    probs, _ = masked_softmax(scores, mask)
    budget = top_p_budget(probs, p).long().clamp(min=1)
    ordered = scores.sort(dim=-1, descending=True)
    cumulative = probs.gather(-1, ordered.indices).cumsum(-1)
    padded = torch.nn.functional.pad(cumulative, (1, 0))  # padded[..., j] = a_j
    inside = padded.gather(-1, budget.unsqueeze(-1)).squeeze(-1).clamp(max=1.0)
    shrink_mass = padded.gather(-1, (budget - 1).unsqueeze(-1)).squeeze(-1)
    shrink = 0.5 * torch.log(p * (1 - shrink_mass) / ((1 - p) * shrink_mass))
    grow = 0.5 * torch.log(inside * (1 - p) / ((1 - inside) * p))
    boundary = torch.nn.functional.pad(ordered.values, (0, 1), value=float("-inf"))
    last = boundary.gather(-1, (budget - 1).unsqueeze(-1)).squeeze(-1)
    following = boundary.gather(-1, budget.unsqueeze(-1)).squeeze(-1)
    order = (last - following) / 2
    return torch.stack([order, shrink.nan_to_num(float("inf")), grow], -1).amin(-1)


def selection_mask(
    method: SparseMethod, q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float
) -> torch.Tensor:
    """``[batch, heads, q_len, kv_len]`` bool: the keys ``method`` keeps (visible ones only)."""
    scores = scaled_scores(q, k, scale)
    layout = method.select(q, k, causal=causal, scale=scale)
    return layout.to_dense(scores) & visible(q, k, causal)


def flip_rate(
    q: torch.Tensor,
    k: torch.Tensor,
    method: SparseMethod,
    sigma: float,
    n_samples: int,
    generator: torch.Generator,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> float:
    """Fraction of (query row, sample) pairs whose selected set changes when ``sigma``-Gaussian noise
    is added to ``q`` ``[batch, heads, q_len, d]`` and ``k`` ``[batch, kv_heads, kv_len, d]``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    reference = selection_mask(method, q, k, causal=causal, scale=scale)
    flips = 0.0
    for _ in range(n_samples):
        noisy_q = q + sigma * torch.randn(q.shape, generator=generator, dtype=q.dtype)
        noisy_k = k + sigma * torch.randn(k.shape, generator=generator, dtype=k.dtype)
        selected = selection_mask(method, noisy_q, noisy_k, causal=causal, scale=scale)
        flips += (selected != reference).any(-1).double().mean().item()
    return flips / n_samples


# ---------------------------------------------------------------------------- Lipschitz
@dataclass(frozen=True)
class AttentionWeights:
    """One multi-head attention layer (TransformerLens shapes): ``W_Q``, ``W_K``, ``W_V``
    ``[heads, d_model, d_head]``, ``W_O`` ``[heads, d_head, d_model]``, ``b_Q``, ``b_K``, ``b_V``
    ``[heads, d_head]``, ``b_O`` ``[d_model]``; scores ``scale * q . k``, causal or not."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor
    scale: float
    causal: bool

    @classmethod
    def from_transformer_lens(cls, attn: nn.Module) -> AttentionWeights:
        """The weights of a TL ``Attention`` module, or of a ``TransformerBridge``'s
        ``AttentionBridge`` around TL-native attention (``bridge.blocks[i].attn``); no rotary, no
        grouped-query attention."""
        bridge = type(attn).__name__ == "AttentionBridge"
        cfg = attn.config if bridge else attn.cfg
        if cfg.positional_embedding_type == "rotary" or cfg.n_key_value_heads is not None:
            raise ValueError("AttentionWeights needs plain attention (no rotary, no GQA)")
        names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
        tensors = {name: getattr(attn, name).detach().double() for name in names}
        causal = cfg.attention_dir == "causal"
        # TL: scores / attn_scale; TL-native: scores / scale
        divisor = attn.original_component.scale if bridge else attn.attn_scale
        return cls(**tensors, scale=1.0 / float(divisor), causal=causal)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``Attn(x)``: ``x`` ``[n, d_model]`` -> ``[n, d_model]``."""
        q = torch.einsum("nm,hmd->hnd", x, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("nm,hmd->hnd", x, self.W_K) + self.b_K[:, None]
        v = torch.einsum("nm,hmd->hnd", x, self.W_V) + self.b_V[:, None]
        mask = torch.ones(x.shape[0], x.shape[0], dtype=torch.bool, device=x.device)
        probs, _ = masked_softmax(
            self.scale * q @ k.transpose(1, 2), mask.tril() if self.causal else mask
        )
        return torch.einsum("hnd,hdm->nm", probs @ v, self.W_O) + self.b_O


def lipschitz_estimate(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    iterations: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """Local Lipschitz constant of ``f`` at ``x``: the largest singular value of its Jacobian, by
    power iteration on ``J^T J v`` (``torch.func.jvp`` then ``vjp``; ``J`` never formed). A lower
    bound of the true value that converges to it."""
    _, pullback = torch.func.vjp(f, x)
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    sigma = 0.0
    for _ in range(iterations):
        v = v / v.norm()
        _, forward = torch.func.jvp(f, (x,), (v,))
        sigma = forward.norm().item()
        (v,) = pullback(forward)
    return sigma


def lipschitz_over_sample(
    f: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor], **options: Any
) -> torch.Tensor:
    """`lipschitz_estimate` at every input of a sample -> ``[len(inputs)]`` (its max estimates the
    Lipschitz constant over the sample's region)."""
    return torch.tensor([lipschitz_estimate(f, x, **options) for x in inputs])


def analytic_bound(weights: AttentionWeights, x: torch.Tensor) -> float:
    """Upper bound of the Lipschitz constant (Frobenius norms) of ``weights`` on every input with
    ``n`` rows of norm at most ``R``, the values of ``x`` ``[n, d_model]``; hence of the local one
    at ``x``.

    Per head (``P`` the attention, ``W_VO = W_V W_O``, ``W_QK = W_Q W_K^T``, ``c`` the scale,
    ``J_i`` row ``i``'s softmax Jacobian), ``d(P X W_VO) = P dX W_VO + dP X W_VO`` with row ``i``
    of ``dP`` equal to ``ds_i^T J_i`` and ``ds_ij = c (dx_i W_QK x_j + u_i . dx_j)``, where
    ``u_i = W_K q_i`` (``1^T J_i = 0`` removes ``b_K``). With ``||P||_2 <= sqrt(||P||_1
    ||P||_inf) <= sqrt(n)``, ``||X^T J_i X||_2 = ||Cov_{p_i}(x)||_2 <= R^2`` and ``||J_i X||_2 <=
    ||J_i||_2^(1/2) ||J_i^(1/2) X||_2 <= R / sqrt(2)``::

        L_h <= ||W_VO||_2 (sqrt(n) + c ||W_QK||_2 R^2 + sqrt(n / 2) R c (R ||W_QK||_2 + ||b_Q W_K^T||))

    and ``L <= sum_h L_h``. ``b_V`` and ``b_O`` shift the output by constants (rows of ``P`` sum to
    1) and drop out. The paper's own quantities are the spectral norms of ``W_v`` and ``W_q^T W_k /
    sqrt(d)`` (``||W_VO||`` and ``c ||W_QK||`` here) and the input norm bound ``R``."""
    n, radius = x.shape[0], x.double().norm(dim=-1).max().item()
    spectral = torch.linalg.matrix_norm
    w_vo = spectral(weights.W_V @ weights.W_O, ord=2)
    w_qk = spectral(weights.W_Q @ weights.W_K.transpose(1, 2), ord=2)
    bias = torch.einsum("hd,hmd->hm", weights.b_Q, weights.W_K).norm(dim=-1)
    c = weights.scale
    query_side = c * w_qk * radius**2
    key_side = math.sqrt(n / 2) * radius * c * (radius * w_qk + bias)
    return (w_vo * (math.sqrt(n) + query_side + key_side)).sum().item()


def model_lipschitz_estimate(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    n_iter: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """`lipschitz_estimate` of a whole model built by `workbench.models.build_model`, as the map
    from its residual stream after the embedding (token + positional embedding, TransformerLens'
    ``input_to_embed``) to its logits (continuous models: its outputs).

    ``inputs``: tokens ``[batch, pos]`` (token models) or ``[batch, pos, d_input]`` (continuous
    models). The map ``[batch, pos, d_model] -> [batch, pos, d_out]`` is run with
    ``model(residual, start_at_layer=0)`` (TransformerLens skips the embedding; rotary positions are
    applied inside attention as usual). Sequences of a batch do not interact, so the Jacobian is
    block diagonal and the estimate is the largest of the per-sequence ones. Parameters are held
    fixed; run the model in float64 for a check at ``1e-4``. ``TransformerBridge`` models raise
    ``NotImplementedError`` (the bridge has no ``start_at_layer``)."""
    from workbench.attention import is_transformer_bridge

    if is_transformer_bridge(model):
        raise NotImplementedError(
            "model_lipschitz_estimate needs HookedTransformer's start_at_layer; TransformerBridge "
            "models (backend 'bridge') do not have it"
        )
    with torch.no_grad():
        residual = model.input_to_embed(inputs)[0].detach()

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(x, start_at_layer=0)

    return lipschitz_estimate(logits, residual, iterations=n_iter, generator=generator)


# ---------------------------------------------------------------------------- semantic focus
def focus_quantities(
    scores: torch.Tensor, keep: torch.Tensor, full_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The semantic-focus theory's quantities of a selection (arXiv 2506.14095; names as the
    public code rithram/spartan logs them: ``width-delta``, ``sep-Delta``, ``beta``).

    ``scores`` ``[..., q_len, kv_len]``; ``keep`` (selected keys) and ``full_mask`` (the keys full
    attention sees; None = all) broadcastable to it; ``keep`` is intersected with ``full_mask``.
    Per row ``[..., q_len]``:

    * ``delta_full``: dispersion ``max - min`` of the scores over ``full_mask`` (0 for one key);
    * ``delta_sparse``: the same over the kept keys;
    * ``separation`` (``Delta``): smallest kept score minus largest visible unkept score (the top-k
      gap for top-k; +inf when every visible key is kept, negative for a selection that is not the
      top of the row, e.g. a banded window);
    * ``c1 = delta_sparse / delta_full`` and ``c2 = separation / delta_full`` (inf / nan where
      ``delta_full = 0``);
    * ``beta``: the largest sink count over the row's kept keys, and ``sink_ratio = beta / k`` with
      ``k`` the row's number of kept keys (0 for rows that keep nothing).

    Per key ``beta_keys`` ``[..., kv_len]``: how many query rows (of the same leading indices)
    select it. The paper's own definition of beta was not read here (its text was not found); the
    public code logs a ``beta`` statistic and passes ``beta / NNZ`` (``NNZ = 5``, its ``k``) to the
    second condition (``bounds-lhs.py``, ``get_ratios`` / ``print_bound_lhs``: "HH sink ratio"), so
    ``sink_ratio`` is the value for `topk_stability_conditions`; the per-input worst case is
    ``beta_keys.amax(-1) / k``."""
    full = torch.ones_like(scores, dtype=torch.bool) if full_mask is None else full_mask
    full = full.expand_as(scores)
    keep = keep.expand_as(scores) & full
    s = scores.double()
    inf = torch.tensor(float("inf"), dtype=s.dtype, device=s.device)

    def spread(mask: torch.Tensor) -> torch.Tensor:
        high = s.masked_fill(~mask, -inf).amax(-1)
        low = s.masked_fill(~mask, inf).amin(-1)
        return torch.where(mask.any(-1), high - low, torch.zeros_like(high))

    delta_full, delta_sparse = spread(full), spread(keep)
    unkept = full & ~keep
    separation = s.masked_fill(~keep, inf).amin(-1) - s.masked_fill(~unkept, -inf).amax(-1)
    separation = torch.where(unkept.any(-1), separation, inf)
    beta_keys = keep.sum(-2)
    beta = (beta_keys.unsqueeze(-2) * keep).amax(-1)
    selected = keep.sum(-1)
    return {
        "delta_full": delta_full,
        "delta_sparse": delta_sparse,
        "separation": separation,
        "c1": delta_sparse / delta_full,
        "c2": separation / delta_full,
        "beta": beta,
        "sink_ratio": beta.double() / selected.clamp(min=1),
        "beta_keys": beta_keys,
    }


def topk_stability_conditions(
    delta_full: torch.Tensor | float,
    c1: torch.Tensor | float,
    c2: torch.Tensor | float,
    beta: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """The two sufficient conditions (broadcast, float64 -> bool) for top-k attention to have a
    smaller stability constant than full attention, exactly as rithram/spartan's ``bounds.py``
    (functions ``wratio`` and ``xratio``; the same formulas in ``bounds-lhs.py``) evaluates them,
    with ``d = delta_full`` (the full attention's dispersion, their ``ds``):

    * ``"w"`` (``wratio``, ``mult = 2``; w.r.t. the weights): ``c1 + ln(2 (1 + 1 / (d c2))) / d < 1``;
    * ``"x"`` (``xratio``; w.r.t. the inputs, with the sink measure ``beta``):
      ``c1 + ln(d (1 + beta) (1 + 1 / (d c2)) + beta) / d < 1 + ln(d + 1) / d``. Their code notes
      "Assuming 2 * gamma * xi^2 = delta_s" and, in ``bounds-lhs.py``, feeds ``beta / NNZ`` (count of
      selecting queries over k: `focus_quantities`' ``sink_ratio``).

    The paper's theorem text was not found (searched for arXiv 2506.14095), so the statements are
    those of the code, not verified against the paper. Their code applies them to quantiles of the
    logged statistics (high ones of ``delta``, ``beta``, low ones of ``Delta``), not row by row.
    ``c2 <= 0`` (a selection that is not the top of the row) gives a NaN or negative log argument:
    False."""
    sides = topk_stability_ratios(delta_full, c1, c2, beta)
    return {name: value < 1.0 for name, value in sides.items()}


def topk_stability_ratios(
    delta_full: torch.Tensor | float,
    c1: torch.Tensor | float,
    c2: torch.Tensor | float,
    beta: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """The left-hand sides of `topk_stability_conditions` (float64), each a condition when ``< 1``:
    ``"w"`` = ``c1 + ln(2 (1 + 1 / (d c2))) / d`` and ``"x"`` = ``c1 + ln(d (1 + beta) (1 + 1 /
    (d c2)) + beta) / d - ln(d + 1) / d`` (spartan's ``wratio`` and ``xratio``, ``d =
    delta_full``)."""
    d, c1, c2, beta = (torch.as_tensor(v, dtype=torch.float64) for v in (delta_full, c1, c2, beta))
    spread = 1.0 + 1.0 / (d * c2)
    w = c1 + torch.log(2.0 * spread) / d
    x = c1 + torch.log(d * (1.0 + beta) * spread + beta) / d - torch.log(d + 1.0) / d
    return {"w": w, "x": x}


# ---------------------------------------------------------------------------- streaming
def row_stability_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    selection: Layout | None = None,
    chunk: int = 256,
    k_top: int = STABILITY_TOP_K,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Per row, from q ``[batch, heads, q_len, d]`` and k ``[batch, kv_heads, kv_len, d]``
    (end-aligned causal mask when ``causal``): ``jacobian_norm`` (exact ``||J||_2``, secular root)
    and ``jacobian_frobenius`` of the softmax over every visible key, or over ``selection``'s
    entries when given (the softmax a layer running a sparse method used), and the dense scores'
    ``top_k_margin`` (k = ``k_top``; +inf for rows with at most ``k_top`` keys), each ``[batch,
    heads, q_len]`` float64.

    Query rows are processed ``chunk`` at a time, so the scores, the selection's mask and the
    bisection's temporaries are ``[batch, heads, chunk, kv_len]``: memory ``O(chunk x kv_len)``
    per head, not ``O(q_len x kv_len)``. This is the streaming available here: the kernels' row
    statistics give each row's log-sum-exp, not its Jacobian norm, which needs the whole row of
    probabilities (the secular equation involves every ``p_i``). Scores are computed in
    ``compute_dtype`` (float32 as in `row_stability`, which this equals up to float32 rounding of
    the scores; float64 for exact agreement with an unchunked float64 computation)."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    q_len, kv_len = q.shape[2], k.shape[2]
    parts: dict[str, list[torch.Tensor]] = {
        "jacobian_norm": [],
        "jacobian_frobenius": [],
        "top_k_margin": [],
    }
    for start in range(0, q_len, chunk):
        rows = range(start, min(start + chunk, q_len))
        mask = causal_token_mask(q_len, kv_len, q.device, rows) if causal else None
        scores = scaled_scores(q[:, :, rows.start : rows.stop], k, scale, compute_dtype)
        seen = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
        used = seen.expand_as(scores)
        if selection is not None:
            used = used & selection.to_dense(scores, rows)
        probs = sparse_probs(scores, used)
        parts["jacobian_norm"].append(jacobian_spectral_norm(probs))
        parts["jacobian_frobenius"].append(jacobian_frobenius_norm(probs))
        parts["top_k_margin"].append(top_k_margin(scores, k_top, mask).double())
    return {name: torch.cat(values, dim=-1) for name, values in parts.items()}


TRACE_STATISTICS = ("jacobian_norm", "jacobian_frobenius", "top_k_margin")
"""What `trace_stability` gives (and `workbench.trace.TraceConfig(stability=True)` records)."""


def trace_stability(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    selection: Layout | None = None,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """`TRACE_STATISTICS` per row, each ``[batch, heads, q_len]`` float32, of the softmax a layer
    used: over every visible key, or over ``selection``'s entries where it ran a sparse method
    (streamed in chunks of ``chunk`` query rows, `row_stability_from_qk`). ``top_k_margin`` is
    that of the dense scores (k = `STABILITY_TOP_K`), NaN where a row has at most k keys
    (undefined). q ``[batch, heads, q_len, d]``, k ``[batch, heads, kv_len, d]``."""
    rows = row_stability_from_qk(q, k, causal=causal, scale=scale, selection=selection, chunk=chunk)
    margin = rows["top_k_margin"]
    rows["top_k_margin"] = torch.where(torch.isinf(margin), math.nan, margin)
    return {name: rows[name].float() for name in TRACE_STATISTICS}


# ---------------------------------------------------------------------------- traces
def row_stability(capture: LayerCapture) -> dict[str, torch.Tensor]:
    """`ROW_STATISTICS` of one captured layer (`workbench.capture`), each ``[batch, heads,
    q_len]``: ``||J||_2`` of the dense softmax of its q and k, ``||J||_2`` of the softmax the layer
    used (over its method's selection where it ran one, else the dense one) and the dense top-k
    margin (k = `STABILITY_TOP_K`; +inf for rows with at most k keys). Unpadded inputs only."""
    if capture.key_padding is not None:
        raise ValueError("stability metrics need unpadded inputs")
    scores = scaled_scores(capture.q, capture.k, capture.scale)
    keep = visible(capture.q, capture.k, capture.causal).expand_as(scores)
    used = capture.used_mask(scores)
    return {
        "jacobian_norm": jacobian_spectral_norm(sparse_probs(scores, keep)),
        "method_jacobian_norm": jacobian_spectral_norm(sparse_probs(scores, used)),
        "top_k_margin": top_k_margin(scores, STABILITY_TOP_K, keep),
    }

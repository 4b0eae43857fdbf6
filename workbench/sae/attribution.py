"""Which heads, positions and task variables an attention-output SAE's features read.

With ``W_enc`` ``[d_in, d_sae]`` split per head into ``W_enc[h]`` ``[d_head, d_sae]`` (rows of head
``h`` of the concatenated ``z``) and ``z_h = sum_j p_h[j] v_h[j]`` (the pattern the layer used times
the values), a feature's pre-activation decomposes exactly:

    pre = (z - b_dec) W_enc + b_enc
        = sum_h sum_j p_h[j] (v_h[j] W_enc[h])  -  b_dec W_enc  +  b_enc

* `head_decoder_norms`: ``||W_dec[f, h]||`` per feature and head (which heads a feature writes);
* `direct_attribution`: the per-head terms ``(z_h - b_dec_h) W_enc[h]``, which sum over the heads to
  ``pre - b_enc`` (Kissane et al.'s direct feature attribution);
* `source_attribution`: the per-position terms ``sum_h p_h[j] (v_h[j] W_enc[h])`` (summing over
  positions gives ``z W_enc``), from a capture of the layer, and `relevant_attribution`: the part
  of them that lands on the task's ground-truth relevant positions;
* `variable_match`: how well each feature's firing matches each value of a task variable (F1 of
  "fires" against "the variable has this value"), and which values have a dedicated feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernels.reference import repeat_kv
from workbench.capture import LayerCapture

DEDICATED_F1 = 0.8
"""A value of a task variable has a dedicated feature when some feature's firing matches it with
at least this F1."""


def _split_heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``W_enc`` ``[n_heads * d_head, d_sae]`` -> ``[n_heads, d_head, d_sae]``."""
    return weight.reshape(n_heads, -1, weight.shape[-1])


@torch.no_grad()
def head_decoder_norms(sae: Any, n_heads: int) -> torch.Tensor:
    """``[d_sae, n_heads]``: the norm of each feature's decoder direction within each head."""
    w_dec = sae.W_dec.detach().float()  # [d_sae, n_heads * d_head]
    return w_dec.reshape(w_dec.shape[0], n_heads, -1).norm(dim=-1)


def _feature_scale(sae: Any) -> torch.Tensor | float:
    """sae-lens's TopK option ``rescale_acts_by_decoder_norm`` multiplies each pre-activation by
    its decoder norm: ``[d_sae]`` then, else 1."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return sae.W_dec.detach().float().norm(dim=-1)
    return 1.0


def _centred(sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ``[N, n_heads, d_head]`` minus ``b_dec`` where sae-lens subtracts it."""
    bias = sae.b_dec.detach().float().reshape(rows.shape[1], -1)
    return rows.float() - bias * float(sae.cfg.apply_b_dec_to_input)


@torch.no_grad()
def direct_attribution(sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """``[N, d_sae, n_heads]``: each head's term of each feature's pre-activation for ``rows``
    ``[N, n_heads, d_head]`` (sums over the heads to ``pre - b_enc``, both scaled where sae-lens
    scales them)."""
    w_enc = _split_heads(sae.W_enc.detach().float(), rows.shape[1])
    terms = torch.einsum("nhd,hdf->nfh", _centred(sae, rows), w_enc)
    scale = _feature_scale(sae)
    return terms * (scale[:, None] if isinstance(scale, torch.Tensor) else scale)


@torch.no_grad()
def pre_activations(sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """``[N, d_sae]`` sae-lens's ``hidden_pre``: ``((z - b_dec) W_enc + b_enc)`` (times the
    decoder norms under ``rescale_acts_by_decoder_norm``) of ``rows`` ``[N, n_heads, d_head]``."""
    pre = _centred(sae, rows).flatten(1) @ sae.W_enc.detach().float() + sae.b_enc.detach().float()
    return pre * _feature_scale(sae)


@torch.no_grad()
def source_attribution(
    sae: Any, capture: LayerCapture, where: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """``[n, len(features), kv_len]``: for the rows at ``where`` ``[n, 2]`` (example, query
    position) of a captured layer, each source position's term ``sum_h p_h[j] (v_h[j] W_enc[h, f])``
    of the listed features ``[F]`` (summing over positions gives ``z W_enc`` of those features;
    scaled as `pre_activations`)."""
    weights = capture.weights()  # [batch, heads, q, kv]
    n_heads = weights.shape[1]
    v = repeat_kv(capture.v, n_heads).float()  # [batch, heads, kv, d_head]
    w_enc = _split_heads(sae.W_enc.detach().float(), n_heads)[:, :, features]  # [heads, d_head, F]
    values = torch.einsum("bhkd,hdf->bhkf", v, w_enc)  # each position's write, per feature
    rows = weights[where[:, 0], :, where[:, 1]]  # [n, heads, kv]
    terms = torch.einsum("nhk,nhkf->nfk", rows, values[where[:, 0]])
    scale = _feature_scale(sae)
    return terms * (scale[features][:, None] if isinstance(scale, torch.Tensor) else scale)


def relevant_attribution(
    attribution: torch.Tensor, relevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(on_relevant, total)``, each ``[n, F]``: the sum of each feature's source attribution
    ``[n, F, kv_len]`` over the ``relevant`` positions ``[n, R]`` (-1 padded) and over all
    positions. A feature's relevant share is ``sum on_relevant / sum total`` over the rows where it
    fires (`FeatureReport.relevant_share`)."""
    kv_len = attribution.shape[-1]
    mask = torch.zeros(attribution.shape[0], kv_len + 1, dtype=attribution.dtype)
    mask.scatter_(1, torch.where(relevant >= 0, relevant, kv_len).cpu(), 1.0)
    on_relevant = torch.einsum("nfk,nk->nf", attribution, mask[:, :kv_len].to(attribution.device))
    return on_relevant, attribution.sum(-1)


@dataclass(frozen=True)
class VariableMatch:
    """Features against the values of one task variable.

    Attributes:
        name: the variable (e.g. ``"target"``: the token a prediction must output).
        values: ``[V]`` the values seen.
        f1: ``[d_sae, V]`` F1 of "the feature fires" against "the variable has the value".
        best_feature: ``[V]`` the best-matching feature of each value; ``best_f1`` its F1.
    """

    name: str
    values: torch.Tensor
    f1: torch.Tensor
    best_feature: torch.Tensor
    best_f1: torch.Tensor

    @property
    def dedicated(self) -> int:
        """Values with a dedicated feature (F1 >= `DEDICATED_F1`)."""
        return int((self.best_f1 >= DEDICATED_F1).sum())

    def summary(self) -> dict[str, Any]:
        return {
            "variable": self.name,
            "values": int(self.values.numel()),
            "dedicated": self.dedicated,
            "mean_best_f1": self.best_f1.mean().item(),
        }


def variable_match(name: str, active: torch.Tensor, variable: torch.Tensor) -> VariableMatch:
    """`VariableMatch` of ``active`` ``[N, d_sae]`` bool (the features firing on each row) against
    ``variable`` ``[N]`` (the variable's value on each row)."""
    values = variable.unique()
    is_value = variable[:, None] == values[None, :]  # [N, V]
    fires = active.float()
    hits = fires.T @ is_value.float()  # [d_sae, V]: fired and had the value
    precision = hits / fires.sum(0)[:, None].clamp_min(1)
    recall = hits / is_value.float().sum(0)[None, :].clamp_min(1)
    f1 = torch.where(hits > 0, 2 * precision * recall / (precision + recall), 0.0)
    best_f1, best_feature = f1.max(0)
    return VariableMatch(name, values, f1, best_feature, best_f1)

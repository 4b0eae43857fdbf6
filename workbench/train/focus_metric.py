"""The ``focus`` evaluation metric: the semantic-focus theory's quantities
(`workbench.metrics.stability.focus_quantities`) of the attention each layer used, as the paper's
code measures them (rithram/spartan, ``was.py``: per query row the dispersion ``delta`` of the
scores over the selected keys and over all keys, the separation ``Delta`` between the selected and
the unselected keys, and per key ``beta``, how many queries select it)."""

from __future__ import annotations

import torch

from kernels.reference import scaled_scores
from toy_tasks.base import Batch
from workbench.attention import full_mask
from workbench.capture import LayerCapture
from workbench.metrics.stability import STABILITY_TOP_K, focus_quantities
from workbench.train.config import TrainConfig
from workbench.train.evaluation import query_rows
from workbench.train.registry import EvalRows, eval_metric

ROW_MEANS = ("delta_full", "delta_sparse", "separation", "c1", "c2", "sink_ratio")
"""`focus_quantities` logged as per-layer, per-head means over the query rows (``focus``)."""
POOLED = ("delta_full", "delta_sparse", "separation", "beta")
"""Logged as percentiles over every layer, head and row (``focus_quantiles``; ``beta`` over
keys), the quantities the paper's two sufficient conditions take."""


@eval_metric("focus")
def focus_rows(capture: LayerCapture, batch: Batch, config: TrainConfig) -> EvalRows:
    """``focus`` (`ROW_MEANS`) and ``focus_quantiles`` (`POOLED`) of one layer. The selection is
    the layer's own where it ran a sparse method, else the top-``STABILITY_TOP_K`` keys of each
    row (what top-k attention would keep; ``delta_full`` is the dense attention's either way).
    Rows: the query rows `workbench.train.evaluation.query_rows` averages over."""
    if capture.key_padding is not None:
        raise ValueError("the focus metric needs unpadded inputs")
    scores = scaled_scores(capture.q, capture.k, capture.scale)  # [batch, heads, q, kv]
    q_len, kv_len = scores.shape[2:]
    full = full_mask(q_len, kv_len, capture.causal, None).to(scores.device).expand_as(scores)
    keep = capture.used_mask(scores) if capture.sparse else _top_k(scores, full, STABILITY_TOP_K)
    quantities = focus_quantities(scores, keep, full)
    rows = query_rows(config.resolved_task(), batch)[0].to(scores.device)  # [batch, q]
    selected = rows[:, None, :].expand(-1, scores.shape[1], -1)
    pooled = {
        name: quantities[name][selected] for name in ("delta_full", "delta_sparse", "separation")
    }
    pooled["beta"] = quantities["beta_keys"].double()
    return EvalRows(
        capture.layer,
        {"focus": {name: quantities[name] for name in ROW_MEANS}},
        pooled={"focus_quantiles": pooled},
    )


def _top_k(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., kv]`` bool: the ``k`` largest visible scores of each row (all when fewer)."""
    chosen = scores.masked_fill(~mask, float("-inf")).topk(min(k, scores.shape[-1]), dim=-1)
    keep = torch.zeros_like(mask).scatter_(-1, chosen.indices, True)
    return keep & mask

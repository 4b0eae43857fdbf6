"""Fidelity of a sparse method installed in a model, against the same model with dense attention.

``fidelity(model, inputs, method)`` runs two forward passes on the same inputs:

1. **Local (teacher-forced)**: the dense model's forward, captured (`workbench.capture`: every
   chosen layer runs the model's own attention), and on each layer's q, k, v the sparse output
   (`workbench.sparse.patch.SparseCore.compute`, `layer_fidelity`). Per layer:
   relative output error ``||z_sparse - z_dense|| / ||z_dense||`` (``z`` ``[batch, heads, q_len,
   d_head]`` before the output projection, real query rows), attention recall (the dense softmax mass
   inside the method's selection, `kernels.api.row_stats(selection=...)`, renormalised over the real
   keys when there is padding) and the density actually used (`kept_fraction`, and the layout's
   block density). Each layer is judged on dense inputs, independently of the others.
2. **End-to-end**: the model inside `sparsify`; its final outputs against the dense ones. For
   logits (decoders, TL models, HF heads with ``logits``): mean ``KL(dense || sparse)`` of the
   predicted distributions; for hidden states (HF encoders): mean cosine similarity. With
   ``targets`` and ``loss_mask`` (a toy task's `Batch`): argmax accuracy on the scored positions,
   dense and sparse.

Means run over the real positions (``attention_mask``, or the one in a tokenizer's mapping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import api
from kernels.api import Impl
from kernels.layout import check_block_size
from kernels.reference import repeat_kv, scaled_scores
from toy_tasks.base import check_int
from workbench.attention import dense_layout, full_mask, is_transformer_lens
from workbench.capture import LayerCapture, capturing
from workbench.sparse.base import SparseMethod
from workbench.sparse.patch import (
    SparseCore,
    SparseResult,
    check_heads,
    kept_fraction,
    real_queries,
    sparsify,
)

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
"""Token ids ``[batch, pos]`` (or model inputs ``[batch, pos, ...]``), or keyword inputs."""


@dataclass(frozen=True)
class LayerFidelity:
    """Teacher-forced fidelity of one layer (means over batch, chosen heads and real query rows).

    Attributes:
        layer: layer index.
        density: fraction of the visible entries the method kept.
        block_density: fraction of the ``q_len x kv_len`` entries inside selected blocks.
        recall: dense attention mass inside the selection.
        output_error: relative Frobenius error of the attention output ``z`` (every head).
    """

    layer: int
    density: float
    block_density: float
    recall: float
    output_error: float


@dataclass(frozen=True)
class FidelityReport:
    """Sparse against dense on the same inputs (see the module docstring).

    Attributes:
        method: name of the method; ``hyper_parameters`` its settings.
        layers: per-layer teacher-forced fidelity, in layer order.
        output_error: end-to-end relative error of the final outputs.
        kl: mean ``KL(dense || sparse)`` of the output distributions (logits), else None.
        cosine: mean cosine similarity of the final hidden states (no logits), else None.
        dense_accuracy, sparse_accuracy: argmax accuracy on scored positions (with targets).
    """

    method: str
    hyper_parameters: dict[str, Any]
    layers: list[LayerFidelity]
    output_error: float
    kl: float | None = None
    cosine: float | None = None
    dense_accuracy: float | None = None
    sparse_accuracy: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_delta(self) -> float | None:
        """Sparse minus dense accuracy (None without targets)."""
        if self.dense_accuracy is None or self.sparse_accuracy is None:
            return None
        return self.sparse_accuracy - self.dense_accuracy

    def mean(self, name: str) -> float:
        """Mean over layers of a `LayerFidelity` field (``"density"``, ``"recall"``, ...)."""
        return sum(getattr(layer, name) for layer in self.layers) / len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) with the layer means and the accuracy delta."""
        means = ("density", "block_density", "recall")
        return {
            **asdict(self),
            **{f"mean_{name}": self.mean(name) for name in means},
            "mean_local_output_error": self.mean("output_error"),
            "accuracy_delta": self.accuracy_delta,
        }


def layer_fidelity(capture: LayerCapture, sparse: SparseCore) -> LayerFidelity:
    """Teacher-forced fidelity of one dense layer's capture: ``sparse``'s output on the same q, k,
    v against the output the layer produced."""
    result = sparse.compute(capture)
    return LayerFidelity(
        layer=capture.layer,
        density=kept_fraction(result.layout, capture, result.q, result.k),
        block_density=result.layout.block_density(),
        recall=recall(capture, result, sparse.impl),
        output_error=relative_error(result.z, capture.z, real_queries(capture)),
    )


def relative_error(z: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor) -> float:
    """``||z - reference|| / ||reference||`` (Frobenius) of outputs ``[batch, heads, q_len,
    d_head]`` over the query ``rows`` ``[batch|1, 1, q_len, 1]`` (bool)."""
    error = ((z.float() - reference.float()) * rows).norm()
    return (error / (reference.float() * rows).norm().clamp_min(1e-30)).item()


@dataclass(frozen=True, eq=False)
class HeadSelection:
    """What a sparse method keeps of one head of one example, teacher-forced on a dense capture.

    Attributes:
        kept: ``[q_len, kv_len]`` bool, the visible entries the method keeps.
        density: kept fraction of the visible entries.
        recall: dense attention mass inside the selection (mean over the real query rows).
        output_error: relative error of the head's output ``z`` ``[q_len, d_head]``.
    """

    kept: torch.Tensor
    density: float
    recall: float
    output_error: float


@torch.no_grad()
def head_selection(
    capture: LayerCapture,
    method: SparseMethod,
    *,
    example: int,
    head: int,
    block_size: int = 64,
    impl: Impl = "auto",
) -> HeadSelection:
    """The selection of ``method`` for ``head`` of ``example`` of a dense layer capture
    (q ``[batch, heads, q_len, d_head]``), with its density, recall and output error, as
    `layer_fidelity` measures a whole layer: the method runs on that head's q, k, v alone."""
    if not isinstance(capture, LayerCapture):
        raise ValueError(f"capture must be a LayerCapture, got {type(capture).__name__}")
    if not isinstance(method, SparseMethod):
        raise ValueError(
            f"method must be a SparseMethod (workbench.sparse.get(name)), got {method!r}"
        )
    if capture.sparse:
        raise ValueError("head_selection needs a dense capture (the layer ran a sparse method)")
    batch, heads = capture.q.shape[:2]
    check_int("example", example, 0, batch - 1)
    check_int("head", head, 0, heads - 1)
    check_block_size("block_size", block_size)
    one = replace(
        capture,
        q=capture.q[example : example + 1],
        k=capture.k[example : example + 1],
        v=capture.v[example : example + 1],
        z=capture.z[example : example + 1],
        key_padding=None
        if capture.key_padding is None
        else capture.key_padding[example : example + 1],
        pattern=None,
    )
    core = SparseCore(method, (head,), block_size, impl, record=False)
    result = core.compute(one)  # result.q, result.k: [1, 1, q_len | kv_len, d_head]
    scores = scaled_scores(result.q, result.k, one.scale)
    visible = full_mask(scores.shape[2], scores.shape[3], one.causal, one.key_padding)
    kept = result.layout.to_dense(scores) & visible.to(scores.device)
    rows = real_queries(one)
    return HeadSelection(
        kept=kept[0, 0].cpu(),
        density=kept_fraction(result.layout, one, result.q, result.k),
        recall=recall(one, result, impl),
        output_error=relative_error(result.z[:, [head]], one.z[:, [head]], rows),
    )


def recall(capture: LayerCapture, result: SparseResult, impl: Impl = "auto") -> float:
    """Mean dense attention mass inside ``result.layout`` over batch, chosen heads and real query
    rows; with key padding the dense distribution is the one over the real keys."""
    q = result.q  # [batch, chosen, q_len, d_head]
    k = repeat_kv(result.k, q.shape[1])

    def mass(selection: Any) -> torch.Tensor:  # [batch, chosen, q_len]
        stats = api.row_stats(
            q,
            k,
            scale=capture.scale,
            causal=capture.causal,
            ps=(0.5,),
            selection=selection,
            impl=impl,
        )
        return stats.selection_mass

    inside = mass(result.layout)
    if capture.key_padding is not None:
        inside = inside / mass(dense_layout(capture)).clamp_min(1e-30)
    rows = real_queries(capture)[..., 0].expand_as(inside)
    return inside[rows].mean().item()


def model_outputs(
    model: nn.Module, inputs: Inputs, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """``(final outputs [batch, pos, vocab | d_model], True when they are logits)``."""
    kwargs = dict(inputs) if isinstance(inputs, Mapping) else {}
    args = () if isinstance(inputs, Mapping) else (inputs,)
    if attention_mask is not None:
        encoder = type(model).__name__ == "HookedEncoder"
        kwargs["one_zero_attention_mask" if encoder else "attention_mask"] = attention_mask
    output = model(*args, **kwargs)
    if isinstance(output, torch.Tensor):
        return output, is_transformer_lens(model)
    if getattr(output, "logits", None) is not None:
        return output.logits, True
    return output.last_hidden_state, False


def real_positions(inputs: Inputs, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[batch, pos]`` bool of real tokens, or None when every position is real."""
    if attention_mask is None and isinstance(inputs, Mapping):
        attention_mask = inputs.get("attention_mask")
    return None if attention_mask is None else attention_mask.bool()


def masked_mean(values: torch.Tensor, positions: torch.Tensor | None) -> float:
    """Mean of ``values`` ``[batch, pos]`` over ``positions`` (None = all)."""
    return (values if positions is None else values[positions]).float().mean().item()


def kl_divergence(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(dense) || softmax(sparse))`` over the last dim, ``[batch, pos]`` (>= 0)."""
    log_dense = F.log_softmax(dense.double(), dim=-1)
    log_sparse = F.log_softmax(sparse.double(), dim=-1)
    return (log_dense.exp() * (log_dense - log_sparse)).sum(-1).clamp_min(0.0)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> float:
    """Argmax accuracy of ``logits`` ``[batch, pos, vocab]`` on ``targets`` ``[batch, pos]`` where
    ``loss_mask`` ``[batch, pos]`` is True."""
    correct = logits.argmax(-1) == targets.to(logits.device)
    return masked_mean(correct, loss_mask.to(logits.device).bool())


@torch.no_grad()
def fidelity(
    model: nn.Module,
    inputs: Inputs,
    method: SparseMethod,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    block_size: int = 64,
    targets: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    impl: Impl = "auto",
) -> FidelityReport:
    """Compare ``model`` with ``method`` installed in ``layers`` / ``heads`` (None = all) against the
    dense model on ``inputs`` (see the module docstring). ``attention_mask`` ``[batch, pos]`` (1 =
    real token) is passed to the model; ``targets`` / ``loss_mask`` ``[batch, pos]`` give accuracy.
    """
    if (targets is None) != (loss_mask is None):
        raise ValueError("targets and loss_mask must be given together")
    sparse_core = SparseCore(method, check_heads(heads), block_size, impl, record=False)
    local: list[LayerFidelity] = []

    def judge(capture: LayerCapture) -> None:  # as each layer runs: one layer in memory
        local.append(layer_fidelity(capture, sparse_core))

    with torch.no_grad(), capturing(model, layers=layers, on_layer=judge):
        dense, logits = model_outputs(model, inputs, attention_mask)
    with sparsify(
        model, method, layers=layers, heads=heads, block_size=block_size, impl=impl, record=False
    ):
        sparse, _ = model_outputs(model, inputs, attention_mask)
    positions = real_positions(inputs, attention_mask)
    rows = slice(None) if positions is None else positions
    error = (sparse[rows] - dense[rows]).norm() / dense[rows].norm().clamp_min(1e-30)
    report: dict[str, Any] = {}
    if logits:
        report["kl"] = masked_mean(kl_divergence(dense, sparse), positions)
    else:
        report["cosine"] = masked_mean(F.cosine_similarity(dense, sparse, dim=-1), positions)
    if targets is not None:
        if not logits:
            raise ValueError("accuracy needs a model that outputs logits")
        report["dense_accuracy"] = accuracy(dense, targets, loss_mask)
        report["sparse_accuracy"] = accuracy(sparse, targets, loss_mask)
    return FidelityReport(
        method=method.name,
        hyper_parameters=method.hyper_parameters(),
        layers=sorted(local, key=lambda layer: layer.layer),
        output_error=error.item(),
        settings={
            "layers": None if layers is None else sorted(set(layers)),
            "heads": None if heads is None else sorted(set(heads)),
            "block_size": block_size,
        },
        **report,
    )

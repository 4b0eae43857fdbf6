"""How good an attention-output SAE is: reconstruction and sparsity on held-out rows, and what
splicing its reconstruction into the layer does to the model (formulas as sae-lens's evaluations
and Kissane et al. define them).

* ``l0``: mean number of active features per row.
* ``explained_variance`` = 1 - ``fvu``, the fraction of variance unexplained
  ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the rows.
* ``dead_fraction``: features active on no held-out row; ``dense_fraction``: features active on
  more than `DENSE_THRESHOLD` of the rows.
* Splicing (the layer's ``z`` replaced by the SAE's reconstruction, everything else as the run
  computes it, its sparse method included): the task loss clean, spliced and with ``z`` zeroed;
  ``loss_recovered = (loss_zero - loss_spliced) / (loss_zero - loss_clean)`` (sae-lens's
  ``ce_loss_score``; 1: as good as clean, 0: as bad as zero ablation); the mean
  ``KL(clean || spliced)`` of the predicted distributions (token tasks); the task metric (accuracy or
  MSE) clean and spliced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toy_tasks.base import Batch, ToyTask
from workbench.attention import AttentionCall, check_layers, model_size, route_attention
from workbench.capture import SparsePlan

DENSE_THRESHOLD = 0.1
"""A feature active on more than this fraction of the rows is dense."""


@dataclass(frozen=True)
class ReconstructionMetrics:
    l0: float
    fvu: float
    explained_variance: float
    dead_fraction: float
    dense_fraction: float
    n_rows: int


def sae_input(sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ``[..., n_heads, d_head]`` as ``sae`` takes them, on its device and dtype:
    sae-lens's inference SAEs with ``reshape_activations="hook_z"`` flatten the heads themselves,
    its training SAEs (which train on flat rows) and SAEs without that setting take them flat."""
    rows = rows.to(sae.W_enc.device, sae.W_enc.dtype)
    reshapes = getattr(getattr(sae, "cfg", None), "reshape_activations", None) == "hook_z"
    if reshapes and not _is_training_sae(sae):
        return rows
    return rows.flatten(-2)


def _is_training_sae(sae: Any) -> bool:
    from sae_lens.saes.sae import TrainingSAE

    return isinstance(sae, TrainingSAE)


def encode_rows(sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """``[N, d_sae]`` feature activations of ``rows`` ``[N, n_heads, d_head]``."""
    return sae.encode(sae_input(sae, rows))


@torch.no_grad()
def reconstruction_metrics(sae: Any, rows: torch.Tensor) -> ReconstructionMetrics:
    """Reconstruction and sparsity of ``sae`` on ``rows`` ``[N, n_heads, d_head]`` (see the
    module docstring)."""
    rows = rows.to(sae.W_enc.device, sae.W_enc.dtype)
    acts = encode_rows(sae, rows)  # [N, d_sae]
    reconstruction = sae.decode(acts).reshape(rows.shape)
    flat, flat_hat = rows.flatten(1), reconstruction.flatten(1)
    unexplained = (flat - flat_hat).square().sum()
    fvu = (unexplained / (flat - flat.mean(0)).square().sum().clamp_min(1e-30)).item()
    active = acts > 0
    frequency = active.float().mean(0)
    return ReconstructionMetrics(
        l0=active.sum(-1).float().mean().item(),
        fvu=fvu,
        explained_variance=1.0 - fvu,
        dead_fraction=(frequency == 0).float().mean().item(),
        dense_fraction=(frequency > DENSE_THRESHOLD).float().mean().item(),
        n_rows=rows.shape[0],
    )


def reconstruct_z(sae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z [batch, heads, pos, d_head] -> the SAE's reconstruction`` of the same shape."""

    def transform(z: torch.Tensor) -> torch.Tensor:
        rows = z.transpose(1, 2)  # [batch, pos, heads, d_head]: sae-lens's hook_z layout
        out = sae(sae_input(sae, rows)).reshape(rows.shape)
        return out.transpose(1, 2).to(z.dtype)

    return transform


@contextmanager
def spliced(
    model: nn.Module,
    layer: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
    sparse: SparsePlan | None = None,
) -> Iterator[None]:
    """Inside the block, layer ``layer``'s output ``z`` ``[batch, heads, pos, d_head]`` goes
    through ``transform`` (e.g. `reconstruct_z`, or zeroing); the layers of ``sparse`` attend as
    the run does, the others with the model's own attention."""
    n_layers = model_size(model)[0]
    sparse_layers = () if sparse is None else check_layers(sparse.layers, n_layers)
    sparse_core = None if sparse is None else sparse.core()

    def core(call: AttentionCall) -> torch.Tensor:
        sparse_here = call.layer in sparse_layers
        z = sparse_core.compute(call).z if sparse_here else call.model_attention()[0]
        return transform(z) if call.layer == layer else z

    with route_attention(model, core, sorted({layer, *sparse_layers})):
        yield


@dataclass(frozen=True)
class SpliceMetrics:
    loss_clean: float
    loss_spliced: float
    loss_zero: float
    loss_recovered: float
    kl: float | None
    metric: str
    clean: float
    spliced: float


@torch.no_grad()
def splice_metrics(
    model: nn.Module,
    sae: Any,
    layer: int,
    task: ToyTask,
    batch: Batch,
    sparse: SparsePlan | None = None,
) -> SpliceMetrics:
    """The task loss and metric of ``model`` on ``batch`` clean, with layer ``layer``'s ``z``
    replaced by ``sae``'s reconstruction and with it zeroed (see the module docstring)."""
    from workbench.train.losses import task_loss, task_metrics

    def outputs(transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with spliced(model, layer, transform, sparse):
            return model(batch.inputs).float()

    clean = outputs(lambda z: z)
    with_sae = outputs(reconstruct_z(sae))
    zero = outputs(torch.zeros_like)
    losses = [task_loss(task, out, batch).item() for out in (clean, with_sae, zero)]
    kl = None
    if task.kind == "tokens":
        mask = batch.loss_mask
        log_clean = F.log_softmax(clean[mask].double(), -1)
        log_sae = F.log_softmax(with_sae[mask].double(), -1)
        kl = (log_clean.exp() * (log_clean - log_sae)).sum(-1).mean().item()
    ((name, clean_metric),) = task_metrics(task, clean, batch).items()
    spliced_metric = task_metrics(task, with_sae, batch)[name]
    gap = losses[2] - losses[0]
    return SpliceMetrics(
        loss_clean=losses[0],
        loss_spliced=losses[1],
        loss_zero=losses[2],
        loss_recovered=(losses[2] - losses[1]) / gap if gap != 0 else float("nan"),
        kl=kl,
        metric=name.removeprefix("eval_"),
        clean=clean_metric,
        spliced=spliced_metric,
    )


@torch.no_grad()
def embedding_splice_metrics(
    model: nn.Module,
    sae: Any,
    layer: int,
    inputs: Mapping[str, torch.Tensor],
    sparse: SparsePlan | None = None,
) -> SpliceMetrics:
    """Splice metrics of an encoder without a task (the bundled MiniLM): the loss is
    ``1 - cos(e, e_clean)`` of the mean-pooled last hidden state ``e`` (sentence-transformers'
    pooling) per window, so ``loss_clean = 0`` and ``loss_recovered`` is as above; the metric is the
    mean cosine similarity to the clean embedding."""

    def embedding(transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with spliced(model, layer, transform, sparse):
            hidden = model(**inputs).last_hidden_state.double()
        mask = inputs["attention_mask"][..., None].double()
        return (hidden * mask).sum(1) / mask.sum(1)

    clean = embedding(lambda z: z)
    cosines = [
        F.cosine_similarity(embedding(transform), clean, dim=-1)
        for transform in (reconstruct_z(sae), torch.zeros_like)
    ]
    loss_spliced, loss_zero = ((1 - cosine).mean().item() for cosine in cosines)
    return SpliceMetrics(
        loss_clean=0.0,
        loss_spliced=loss_spliced,
        loss_zero=loss_zero,
        loss_recovered=(loss_zero - loss_spliced) / loss_zero if loss_zero else float("nan"),
        kl=None,
        metric="cosine",
        clean=1.0,
        spliced=cosines[0].mean().item(),
    )


def as_dict(*metrics: ReconstructionMetrics | SpliceMetrics) -> dict[str, Any]:
    """The fields of several metric records in one JSON-ready dict."""
    return {key: value for record in metrics for key, value in asdict(record).items()}

"""What each feature of an attention-output SAE is: how often it fires, which heads write it,
which source positions it reads and which task variable it tracks, over held-out examples.

`feature_report` runs one captured forward per batch of a source and keeps, per feature, its
activation on every row (for the top-activating examples), its mean direct attribution per head
over the rows where it fires, and, where the source knows the ground-truth relevant positions (a
toy task), the share of its source attribution that lands on them (`workbench.sae.attribution`).
`top_examples` renders a feature's strongest rows with their tokens, the relevant positions and the
source attribution of each position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.attention import model_size
from workbench.capture import LayerCapture, SparsePlan, capturing, run_model
from workbench.sae.attribution import (
    VariableMatch,
    direct_attribution,
    head_decoder_norms,
    relevant_attribution,
    source_attribution,
    variable_match,
)
from workbench.sae.evaluation import encode_rows
from workbench.sae.harvest import layer_rows
from workbench.sae.sources import Source, TaskSource

ROW_CHUNK = 512
"""Rows attributed at a time (bounds the ``[rows, d_sae, kv_len]`` source attribution)."""


@dataclass
class FeatureReport:
    """Features of one SAE over the rows of a source.

    Attributes:
        activations: ``[N, d_sae]`` feature activations of every row.
        where: ``[N, 2]`` each row's (example, position).
        head_norms: ``[d_sae, n_heads]`` decoder norm per head (`head_decoder_norms`).
        head_attribution: ``[d_sae, n_heads]`` mean direct attribution per head over the rows where
            the feature fires (0 for a dead feature).
        shares: ``name -> [d_sae]``, the share of each feature's source attribution on the
            positions of `position_sets` (``relevant``, ``after_relevant``) over the rows where it
            fires (NaN where undefined); empty without ground truth.
        variables: `VariableMatch` per latent variable of the source.
    """

    activations: torch.Tensor
    where: torch.Tensor
    head_norms: torch.Tensor
    head_attribution: torch.Tensor
    shares: dict[str, torch.Tensor] = field(default_factory=dict)
    variables: dict[str, VariableMatch] = field(default_factory=dict)

    @property
    def relevant_share(self) -> torch.Tensor | None:
        """``[d_sae]`` the share on the ground-truth relevant positions (None without them)."""
        return self.shares.get("relevant")

    @property
    def frequency(self) -> torch.Tensor:
        """``[d_sae]`` the fraction of rows each feature fires on."""
        return (self.activations > 0).float().mean(0)

    @property
    def alive(self) -> torch.Tensor:
        """``[d_sae]`` bool: fires on some row."""
        return (self.activations > 0).any(0)

    def top_rows(self, feature: int, n: int = 8) -> torch.Tensor:
        """Indices ``[<= n]`` of the rows where ``feature`` is most active (active rows only)."""
        values = self.activations[:, feature]
        order = values.argsort(descending=True)[:n]
        return order[values[order] > 0]

    def strongest_features(self, n: int = 8) -> torch.Tensor:
        """The ``n`` alive features with the largest mean activation where they fire."""
        fires = self.activations > 0
        mean = self.activations.sum(0) / fires.sum(0).clamp_min(1)
        return mean.argsort(descending=True)[: min(n, int(self.alive.sum()))]

    def summary(self) -> dict[str, Any]:
        """JSON-ready headline: alive features, and per variable how many of its values have a
        dedicated feature; per position set the frequency-weighted share of the alive features
        (``relevant_share``, ``after_relevant_share``)."""
        summary: dict[str, Any] = {
            "rows": int(self.activations.shape[0]),
            "features": int(self.activations.shape[1]),
            "alive": int(self.alive.sum()),
            "variables": [match.summary() for match in self.variables.values()],
        }
        for name, share in self.shares.items():
            weights = self.frequency * ~share.isnan()
            summary[f"{name}_share"] = (
                (share.nan_to_num() * weights).sum() / weights.sum().clamp_min(1e-30)
            ).item()
        return summary


def position_sets(relevant: torch.Tensor, kv_len: int) -> dict[str, torch.Tensor]:
    """Source positions ``[n, R]`` (-1 padded) per row whose attribution a report measures:
    ``relevant``, the ground truth, and ``after_relevant``, each relevant position shifted one on
    (where a previous-token head copies it; positions that are relevant themselves or past the
    sequence left out)."""
    after = torch.where(relevant >= 0, relevant + 1, -1)
    duplicate = (after[:, :, None] == relevant[:, None, :]).any(-1)
    after = torch.where(duplicate | (after >= kv_len), -1, after)
    return {"relevant": relevant, "after_relevant": after}


@torch.no_grad()
def feature_report(
    sae: Any,
    model: nn.Module,
    source: Source,
    layer: int,
    *,
    sparse: SparsePlan | None = None,
) -> FeatureReport:
    """`FeatureReport` of ``sae`` (on layer ``layer``) over ``source``'s rows, the model attending
    as ``sparse`` says."""
    device = next(model.parameters()).device
    sae_device = sae.W_enc.device
    d_sae = sae.W_enc.shape[1]
    activations, wheres = [], []
    head_sums = torch.zeros(d_sae, model_size(model)[1], dtype=torch.float64)
    share_on: dict[str, torch.Tensor] = {}
    share_total = torch.zeros(d_sae, dtype=torch.float64)
    truth = isinstance(source, TaskSource) and source.task.kind == "tokens"
    offset = 0
    for index, (inputs, keep) in enumerate(source.batches(device)):
        captured: list[LayerCapture] = []
        with capturing(model, layers=[layer], sparse=sparse, on_layer=captured.append):
            run_model(model, inputs)
        (capture,) = captured
        rows, where = layer_rows(capture, keep)
        relevant = source.batch(index).relevant_positions if truth else None
        for start in range(0, rows.shape[0], ROW_CHUNK):
            part, part_where = rows[start : start + ROW_CHUNK], where[start : start + ROW_CHUNK]
            acts = encode_rows(sae, part).float().cpu()
            fires = (acts > 0).double()
            direct = direct_attribution(sae, part.to(sae_device)).double().cpu()
            head_sums += torch.einsum("nfh,nf->fh", direct, fires)
            if relevant is not None:
                attribution = source_attribution(
                    sae, capture, part_where.to(device), torch.arange(d_sae, device=sae_device)
                ).cpu()
                at_rows = relevant[part_where[:, 0].cpu(), part_where[:, 1].cpu()]
                for name, positions in position_sets(at_rows, attribution.shape[-1]).items():
                    on, total = relevant_attribution(attribution, positions)
                    share_on[name] = share_on.get(name, 0) + (on.double() * fires).sum(0)
                share_total += (total.double() * fires).sum(0)
            activations.append(acts)
            wheres.append(part_where.cpu() + torch.tensor([offset, 0]))
        offset += keep.shape[0]
    activations_all, where_all = torch.cat(activations), torch.cat(wheres)
    active = activations_all > 0
    fired = active.sum(0).double()
    return FeatureReport(
        activations=activations_all,
        where=where_all,
        head_norms=head_decoder_norms(sae, head_sums.shape[1]).cpu(),
        head_attribution=(head_sums / fired.clamp_min(1)[:, None]).float(),
        shares={
            name: torch.where(share_total > 0, on / share_total, torch.nan).float()
            for name, on in share_on.items()
        },
        variables={
            name: variable_match(name, active, values)
            for name, values in source.variables(where_all).items()
        },
    )


@torch.no_grad()
def top_examples(
    report: FeatureReport,
    sae: Any,
    model: nn.Module,
    source: Source,
    layer: int,
    feature: int,
    *,
    n: int = 8,
    sparse: SparsePlan | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` rows where ``feature`` is most active, each ``{"example", "position",
    "activation", "tokens", "relevant" (positions; empty without ground truth), "attribution"
    (per source position, `source_attribution`)}``, computed from a fresh capture of each
    example."""
    device = next(model.parameters()).device
    examples = []
    for row in report.top_rows(feature, n).tolist():
        example, position = report.where[row].tolist()
        inputs, relevant = _example_inputs(source, example, device)
        captured: list[LayerCapture] = []
        with capturing(model, layers=[layer], sparse=sparse, on_layer=captured.append):
            run_model(model, inputs)
        attribution = source_attribution(
            sae,
            captured[0],
            torch.tensor([[0, position]], device=device),
            torch.tensor([feature], device=sae.W_enc.device),
        )[0, 0]
        examples.append(
            {
                "example": example,
                "position": position,
                "activation": report.activations[row, feature].item(),
                "tokens": source.tokens(example),
                "relevant": [] if relevant is None else relevant[position],
                "attribution": attribution.cpu().tolist(),
            }
        )
    return examples


def _example_inputs(source: Source, example: int, device: torch.device) -> tuple[Any, Any]:
    """Model inputs of one example (batch of one) and, for token tasks, its relevant positions
    per query position (lists without padding)."""
    if isinstance(source, TaskSource):
        batch = source.examples(torch.tensor([example])).to(device)
        relevant = [
            [p for p in positions if p >= 0] for positions in batch.relevant_positions[0].tolist()
        ]
        return batch.inputs, relevant
    ids = torch.tensor([source.windows[example]], device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None

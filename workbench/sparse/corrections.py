"""Corrections: methods that run a base selection and then fix its output.

* **Delta attention** (arXiv 2505.11254; code jeffwillette/delta-attention): dense causal attention
  is recomputed for every ``gamma``-th query and for the last ``cut = (N mod gamma) +
  max(min_tail, gamma)`` queries. With ``delta_j = O_dense[j gamma] - O_sparse[j gamma]``, rows
  ``j gamma .. (j+1) gamma - 1`` become ``O_sparse + delta_j`` and the last ``cut`` rows take the
  dense output. Applied per head, before the output projection.
* **Re-ttention-style rescaling** (arXiv 2505.22918): the sparse softmax renormalises over the
  selected keys only. With the dense and sparse log-normalisers ``lse_dense``, ``lse_sparse`` of a
  reference step, ``r = exp(lse_sparse - lse_dense)`` is the dense attention mass inside the
  selection, and ``O_dense = r * O_sparse + R`` exactly, where ``R = O_dense - r * O_sparse`` is the
  contribution of the keys outside the selection. `NormaliserStats` remembers ``(r, R)`` from a
  reference step and a later step is corrected as ``r_ref * O_sparse + R_ref`` (the paper reuses
  softmax statistics and a residual from earlier diffusion steps; this is that idea stated
  per query row). With the statistics of the same inputs the correction reproduces dense attention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kernels import api
from kernels.layout import Layout, causal_token_mask
from workbench.sparse.base import SparseMethod, check_int
from workbench.sparse.registry import as_method, register_method
from workbench.sparse.sink_window import SinkWindow


def delta_rows(q_len: int, gamma: int, min_tail: int) -> tuple[torch.Tensor, int]:
    """``(anchors, cut)``: the rows ``j * gamma`` before the dense tail, and the tail length."""
    cut = min(q_len, q_len % gamma + max(min_tail, gamma))
    return torch.arange(0, q_len - cut, gamma), cut


def dense_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    *,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """Dense attention output of the query ``rows`` only: ``[batch, heads, len(rows), d_head]``
    (the causal mask keeps each row's end-aligned position)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    rows = rows.to(q.device)
    if causal:
        mask = causal_token_mask(q_len, kv_len, q.device)[rows]
    else:
        mask = torch.ones(len(rows), kv_len, dtype=torch.bool, device=q.device)
    layout = Layout.from_token_mask(mask[None, None], block_q=16, block_k=16)
    return api.sparse_attention(q[:, :, rows], k, v, layout, scale=scale)


def delta_correction(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out_sparse: torch.Tensor,
    *,
    gamma: int,
    min_tail: int,
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """Delta attention's correction of ``out_sparse`` ``[batch, heads, q_len, d_head]``."""
    q_len = q.shape[2]
    anchors, cut = delta_rows(q_len, gamma, min_tail)
    tail = torch.arange(q_len - cut, q_len)
    dense = dense_rows(q, k, v, torch.cat([anchors, tail]), causal=causal, scale=scale)
    anchor_dense, tail_dense = dense[:, :, : len(anchors)], dense[:, :, len(anchors) :]
    corrected = out_sparse.clone()
    if len(anchors):
        delta = anchor_dense - out_sparse[:, :, anchors.to(q.device)]
        head = q_len - cut
        corrected[:, :, :head] += delta.repeat_interleave(gamma, dim=2)[:, :, :head]
    corrected[:, :, q_len - cut :] = tail_dense
    return corrected


@dataclass(frozen=True, eq=False)
class CorrectedMethod(SparseMethod):
    """A base selection (a method or a registered name) whose output a correction fixes: selecting
    is the base's, and so is being input-dependent."""

    base: SparseMethod | str = dataclasses.field(default_factory=SinkWindow)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", as_method(self.base))
        super().__post_init__()

    @property
    def input_dependent(self) -> bool:  # type: ignore[override]
        return self.base.input_dependent

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        return self.base.select(q, k, causal=causal, scale=scale, block_size=block_size)


@register_method
@dataclass(frozen=True, eq=False)
class Delta(CorrectedMethod):
    """A base selection (default: sinks + window) corrected by Delta attention. The paper's base is
    sink 1024 + window 2048 on 128K contexts; the default base here is `sink_window`'s toy one."""

    name = "delta"
    description = "base selection + dense recompute every gamma-th query, deltas shared (Delta)"
    paper = "Delta attention: fast and accurate sparse attention inference, arXiv 2505.11254"

    gamma: int = 64
    min_tail: int = 128

    def validate(self) -> None:
        check_int("gamma", self.gamma, 1)
        check_int("min_tail", self.min_tail, 0)

    def correct(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out_sparse: torch.Tensor,
        layout: Layout,
        *,
        causal: bool,
        scale: float | None = None,
    ) -> torch.Tensor:
        return delta_correction(
            q,
            k,
            v,
            out_sparse,
            gamma=self.gamma,
            min_tail=self.min_tail,
            causal=causal,
            scale=scale,
        )


@dataclass(frozen=True, eq=False)
class NormaliserStats:
    """Per-row statistics of a reference step (see the module docstring).

    Attributes:
        inside_mass: ``[batch, heads, q_len]`` dense attention mass inside the selection ``r``.
        residual: ``[batch, heads, q_len, d_head]`` float32 ``O_dense - r * O_sparse``.
    """

    inside_mass: torch.Tensor
    residual: torch.Tensor


def normaliser_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    *,
    causal: bool,
    scale: float | None = None,
) -> NormaliserStats:
    """Statistics of a reference step: one dense and one sparse attention of the same inputs."""
    dense_layout = Layout.dense(q.shape[2], k.shape[2], causal=causal, device=q.device)
    out_dense, lse_dense = api.sparse_attention(q, k, v, dense_layout, scale=scale, return_lse=True)
    out_sparse, lse_sparse = api.sparse_attention(q, k, v, layout, scale=scale, return_lse=True)
    inside = torch.exp(lse_sparse - lse_dense)  # 0 for rows whose selection is empty
    residual = out_dense.float() - inside.unsqueeze(-1) * out_sparse.float()
    return NormaliserStats(inside_mass=inside, residual=residual)


def rescale(out_sparse: torch.Tensor, stats: NormaliserStats) -> torch.Tensor:
    """Re-ttention-style correction ``r_ref * O_sparse + R_ref`` in ``out_sparse``'s dtype."""
    corrected = stats.inside_mass.unsqueeze(-1) * out_sparse.float() + stats.residual
    return corrected.to(out_sparse.dtype)


@register_method
@dataclass(frozen=True, eq=False)
class Rettention(CorrectedMethod):
    """A base selection corrected with normaliser statistics remembered from a reference step:
    ``method.calibrated(q, k, v, causal=...)`` returns the method holding them."""

    name = "rettention"
    description = "base selection + output rescaled by remembered softmax normaliser statistics"
    paper = (
        "Re-ttention: ultra sparse visual generation via attention statistical reshape, "
        "arXiv 2505.22918"
    )
    needs_calibration = True

    stats: NormaliserStats | None = dataclasses.field(default=None, repr=False)

    def validate(self) -> None:
        if self.stats is not None and not isinstance(self.stats, NormaliserStats):
            raise ValueError(f"stats must be NormaliserStats or None, got {type(self.stats)}")

    def hyper_parameters(self) -> dict:
        """The hyper-parameters (statistics are state, not hyper-parameters)."""
        return {"base": {"name": self.base.name, **self.base.hyper_parameters()}}

    def calibrated(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Rettention:
        """This method holding the statistics of a reference step on ``q``, ``k``, ``v``."""
        layout = self.select(q, k, causal=causal, scale=scale, block_size=block_size)
        stats = normaliser_stats(q, k, v, layout, causal=causal, scale=scale)
        return dataclasses.replace(self, stats=stats)

    def correct(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out_sparse: torch.Tensor,
        layout: Layout,
        *,
        causal: bool,
        scale: float | None = None,
    ) -> torch.Tensor:
        if self.stats is None:
            raise ValueError(
                "stats is None: call calibrated(q, k, v, ...) on a reference step first"
            )
        if self.stats.residual.shape != out_sparse.shape:
            raise ValueError(
                f"stats were taken for output shape {tuple(self.stats.residual.shape)}, "
                f"got {tuple(out_sparse.shape)}"
            )
        return rescale(out_sparse, self.stats)

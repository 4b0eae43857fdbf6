"""Corrections: methods that run a base selection and then fix its output, as combiners of branches
(`workbench.sparse.branches`): the first branch is the base selection over every query.

* **Delta attention** (arXiv 2505.11254; code jeffwillette/delta-attention): dense causal attention
  is recomputed for every ``gamma``-th query and for the last ``cut = (N mod gamma) +
  max(min_tail, gamma)`` queries. With ``delta_j = O_dense[j gamma] - O_sparse[j gamma]``, rows
  ``j gamma .. (j+1) gamma - 1`` become ``O_sparse + delta_j`` and the last ``cut`` rows take the
  dense output. Applied per head, before the output projection. Branches: the base selection and
  ``dense_rows`` (dense attention of the anchor and tail rows); `delta_combine` mixes them.
* **Re-ttention-style rescaling** (arXiv 2505.22918): the sparse softmax renormalises over the
  selected keys only. With the dense and sparse log-normalisers ``lse_dense``, ``lse_sparse`` of a
  reference step, ``r = exp(lse_sparse - lse_dense)`` is the dense attention mass inside the
  selection, and ``O_dense = r * O_sparse + R`` exactly, where ``R = O_dense - r * O_sparse`` is the
  contribution of the keys outside the selection. `NormaliserStats` remembers ``(r, R)`` from a
  reference step and a later step is corrected as ``r_ref * O_sparse + R_ref`` (the paper reuses
  softmax statistics and a residual from earlier diffusion steps; this is that idea stated
  per query row). With the statistics of the same inputs the correction reproduces dense attention.
  One branch (the base selection); the combination is the rescaling with the remembered statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kernels import api
from kernels.api import Impl
from kernels.layout import Layout, causal_token_mask
from workbench.sparse.base import SparseMethod, check_int
from workbench.sparse.branches import Branch, BranchOutput, run_branch
from workbench.sparse.registry import as_method, register_method
from workbench.sparse.sink_window import SinkWindow


def delta_rows(q_len: int, gamma: int, min_tail: int) -> tuple[torch.Tensor, int]:
    """``(anchors, cut)``: the rows ``j * gamma`` before the dense tail, and the tail length."""
    cut = min(q_len, q_len % gamma + max(min_tail, gamma))
    return torch.arange(0, q_len - cut, gamma), cut


def dense_rows_layout(
    rows: torch.Tensor, q_len: int, kv_len: int, *, causal: bool, device: torch.device
) -> Layout:
    """Dense layout of the query ``rows`` only, over ``len(rows)`` queries (the causal mask keeps
    each row's end-aligned position)."""
    rows = rows.to(device)
    if causal:
        mask = causal_token_mask(q_len, kv_len, device)[rows]
    else:
        mask = torch.ones(len(rows), kv_len, dtype=torch.bool, device=device)
    return Layout.from_token_mask(mask[None, None], block_q=16, block_k=16)


def dense_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    *,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """Dense attention output of the query ``rows`` only: ``[batch, heads, len(rows), d_head]``."""
    layout = dense_rows_layout(rows, q.shape[2], k.shape[2], causal=causal, device=q.device)
    return api.sparse_attention(q[:, :, rows.to(q.device)], k, v, layout, scale=scale)


def delta_branch(
    q_len: int, kv_len: int, gamma: int, min_tail: int, *, causal: bool, device: torch.device
) -> Branch:
    """The ``dense_rows`` branch of Delta attention: the anchors, then the tail."""
    anchors, cut = delta_rows(q_len, gamma, min_tail)
    rows = torch.cat([anchors, torch.arange(q_len - cut, q_len)])
    layout = dense_rows_layout(rows, q_len, kv_len, causal=causal, device=device)
    return Branch("dense_rows", layout, rows=rows)


def delta_combine(
    out_sparse: torch.Tensor, dense: torch.Tensor, *, gamma: int, min_tail: int
) -> torch.Tensor:
    """Delta attention's mix of ``out_sparse`` ``[batch, heads, q_len, d_head]`` and the dense
    outputs ``[batch, heads, n_anchors + cut, d_head]`` of `delta_branch`'s rows."""
    q_len = out_sparse.shape[2]
    anchors, cut = delta_rows(q_len, gamma, min_tail)
    anchor_dense, tail_dense = dense[:, :, : len(anchors)], dense[:, :, len(anchors) :]
    corrected = out_sparse.clone()
    if len(anchors):
        delta = anchor_dense - out_sparse[:, :, anchors.to(out_sparse.device)]
        head = q_len - cut
        corrected[:, :, :head] += delta.repeat_interleave(gamma, dim=2)[:, :, :head]
    corrected[:, :, q_len - cut :] = tail_dense
    return corrected


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
    branch = delta_branch(q.shape[2], k.shape[2], gamma, min_tail, causal=causal, device=q.device)
    dense = run_branch(q, k, v, branch, scale=scale).out
    return delta_combine(out_sparse, dense, gamma=gamma, min_tail=min_tail)


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

    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"gamma": 8, "min_tail": 16}

    gamma: int = 64
    min_tail: int = 128

    def validate(self) -> None:
        check_int("gamma", self.gamma, 1)
        check_int("min_tail", self.min_tail, 0)

    def branches(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
        state: nn.Module | None = None,
    ) -> list[Branch]:
        selection = self.select(q, k, causal=causal, scale=scale, block_size=block_size)
        dense = delta_branch(
            q.shape[2], k.shape[2], self.gamma, self.min_tail, causal=causal, device=q.device
        )
        return [Branch("selection", selection), dense]

    def combine(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        branches: list[Branch],
        outputs: list[BranchOutput],
        *,
        causal: bool,
        scale: float | None = None,
        state: nn.Module | None = None,
        impl: Impl = "auto",
    ) -> torch.Tensor:
        sparse, dense = outputs
        return delta_combine(sparse.out, dense.out, gamma=self.gamma, min_tail=self.min_tail)

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

"""Branches of a composite method: several attentions of the same queries, combined afterwards.

A single-branch method attends over its selection (`SparseMethod.select`). A composite method
(`SparseMethod.branches`) returns several `Branch` es, each an attention of (some of) the queries
over the call's keys or over keys and values of its own (pooled blocks, summaries): every branch
runs through `kernels.api.sparse_attention`, which also gives its logsumexp, and the method's
`SparseMethod.combine` mixes the outputs:

* `merge_by_lse`: the exact softmax over the union of disjoint key sets, ``o = sum_c exp(lse_c -
  L) o_c`` with ``L = logsumexp_c lse_c`` (optionally times gates);
* `gated_sum`: separately normalised branches mixed by gates, ``o = sum_c g_c o_c`` (NSA).

Both backends differentiate the logsumexp, so either merge trains on either backend.

Shapes: ``q: [batch, heads, q_len, d_head]``; a branch's ``k, v: [batch, kv_heads, n_keys, d_head]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kernels.api import Impl
from kernels.layout import Layout
from workbench.attention import layout_attention


@dataclass(frozen=True, eq=False)
class Branch:
    """One attention of a composite method.

    Attributes:
        name: what the branch is (``"selection"``, ``"compressed"``, ``"window"``, ...).
        layout: the entries kept, over (the branch's queries, the branch's keys).
        k, v: ``[batch, kv_heads, n_keys, d_head]`` keys and values of the branch (pooled blocks,
            summaries); None: the call's own.
        rows: ``[n_rows]`` int64 query rows the branch computes (None: every row); the layout is
            then over ``n_rows`` queries.
        tokens: True when the layout is over the call's own keys (``k`` None): such branches make
            up the method's token-level selection (`coverage`).
    """

    name: str
    layout: Layout
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    @property
    def tokens(self) -> bool:
        return self.k is None and self.rows is None


@dataclass(frozen=True, eq=False)
class BranchOutput:
    """``out`` ``[batch, heads, n_rows, d_head]`` (q's dtype) and ``lse`` ``[batch, heads,
    n_rows]`` float32 of one branch (-inf and 0 for rows that keep no key)."""

    out: torch.Tensor
    lse: torch.Tensor


def run_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    branch: Branch,
    *,
    scale: float | None,
    impl: Impl = "auto",
    dropout: float = 0.0,
) -> BranchOutput:
    """Attention of ``branch`` (its keys and values, else ``k``, ``v``; its rows, else every query
    of ``q``) through `kernels.api.sparse_attention`, or with ``dropout`` on its probabilities
    through `workbench.attention.layout_attention`."""
    queries = q if branch.rows is None else q[:, :, branch.rows.to(q.device)]
    keys = k if branch.k is None else branch.k
    values = v if branch.v is None else branch.v
    out, lse = layout_attention(
        queries,
        keys,
        values,
        branch.layout,
        scale=scale,
        dropout=dropout,
        impl=impl,
        return_lse=True,
    )
    return BranchOutput(out, lse)


def merge_by_lse(
    outputs: Sequence[BranchOutput], gates: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_c w_c o_c`` with ``w_c = exp(lse_c - logsumexp_c lse_c)`` (times ``gates`` ``[batch,
    heads, q_len, n_branches]`` when given): over disjoint key sets, the softmax over their union.
    Rows that keep no key in any branch give 0. The weights carry the float32 precision of the
    kernels' logsumexps."""
    lse = torch.stack([output.lse for output in outputs], dim=-1)  # [b, h, q, c]
    total = torch.logsumexp(lse, dim=-1, keepdim=True)
    weights = torch.exp(lse - torch.where(torch.isinf(total), 0.0, total))  # 0 on empty rows
    if gates is not None:
        weights = weights * gates
    return gated_sum(outputs, weights)


def gated_sum(outputs: Sequence[BranchOutput], gates: torch.Tensor) -> torch.Tensor:
    """``sum_c g_c o_c`` for ``gates`` ``[batch|1, heads|1, q_len, n_branches]``, in the outputs'
    dtype."""
    if gates.shape[-1] != len(outputs):
        raise ValueError(f"gates must have {len(outputs)} branches, got {gates.shape[-1]}")
    dtype = torch.promote_types(outputs[0].out.dtype, torch.float32)  # float64 stays float64
    stacked = torch.stack([output.out.to(dtype) for output in outputs], dim=-1)  # [b, h, q, d, c]
    mixed = (stacked * gates.to(dtype).unsqueeze(-2)).sum(-1)
    return mixed.to(outputs[0].out.dtype)


def coverage(branches: Sequence[Branch], scores: torch.Tensor | None = None) -> Layout:
    """The union (`Layout.union`) of the token-level branches (`Branch.tokens`): the call's keys
    the method attends to individually; branches over pooled keys or some rows are left out."""
    layouts = [branch.layout for branch in branches if branch.tokens]
    if not layouts:
        raise ValueError("no branch attends over the call's own keys")
    union = layouts[0]
    for layout in layouts[1:]:
        union = union.union(layout, scores)
    return union


def with_key_padding(layout: Layout, key_padding: torch.Tensor | None) -> Layout:
    """``layout`` restricted to real keys (``key_padding`` ``[batch, kv_len]``, True = real).

    The padding becomes (part of) the token mask: ANDed with the layout's own token mask, or added
    beside its ``row_threshold``, which is kept. The result has an explicit batch dimension.
    """
    if key_padding is None:
        return layout
    batch, kv_len = key_padding.shape
    padding = key_padding[:, None, None, :].expand(batch, 1, layout.q_len, kv_len)
    layout = layout.expand(batch, layout.heads)
    token_mask = padding if layout.token_mask is None else layout.token_mask & padding
    return replace(layout, token_mask=token_mask)

"""HAX-style selection (Zhan et al., "Overcoming long-context limitations of state-space models via
context-dependent sparse attention", arXiv 2507.00449; code DeepGraphLearning/HAX): the union of

* **LSH attention**: queries and keys are hashed by the sign bits of ``n_bits`` fixed random
  projections (one bucket of ``2 ** n_bits`` per vector; the same projections for q and k); a query
  attends to the keys of its own bucket, and to its own position so that no row is empty;
* **key selection**: a learned scorer ``s_j = w . k_j + b`` ranks the keys; every query also attends
  to the ``n_select`` best-scoring keys it can see (the paper's global focus on a few positions).

One softmax over the union, as one branch through `kernels.api.sparse_attention`. The top-n choice
is not differentiable; the scorer learns through a straight-through value gate: the values enter as
``v_j * exp(log sigmoid(s_j) - [log sigmoid(s_j)]_detached)``, exactly ``v_j`` in the forward pass, with the
gradient of a sigmoid gate on each key's value in the backward pass (our choice). HAX adds this
attention inside an SSM layer; here it replaces a transformer layer's attention.

How the authors' code (DeepGraphLearning/HAX, ``src/modeling_enhanced_mamba2.py``) differs, read
after this module was written: the key score is a 2-hidden-layer ReLU MLP of the detached key and
the normalised running sum of the detached queries up to it (ours: linear in the key alone); it is
trained by an auxiliary pairwise ranking loss (binary cross-entropy on score differences) towards
the sigmoid attention that a random sample of keys receives from later queries (ours: the
straight-through value gate); the LSH projections are drawn anew at every forward on mean-centred,
normalised q and k, and a query keeps only its latest bucket matches; the key budget is split
evenly between LSH and selection; and the attention sits beside a Mamba/Mamba2 SSM, which carries
the local and sequential information, instead of replacing a transformer's attention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.layout import Layout
from kernels.reference import repeat_kv
from workbench.sparse.base import SparseMethod, check_int, distances, visible
from workbench.sparse.branches import Branch
from workbench.sparse.registry import register_method
from workbench.sparse.state import SparseState, common_dtype


class KeySelector(SparseState):
    """One layer's HAX state: ``projections`` ``[d_head, n_bits]`` (a fixed random buffer, seeded)
    and the learned key scorer ``weight`` ``[d_head]``, ``bias`` ``[1]``."""

    def __init__(self, d_head: int, n_bits: int, seed: int) -> None:
        super().__init__("hax")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projections", torch.randn(d_head, n_bits, generator=generator))
        self.weight = nn.Parameter(torch.randn(d_head, generator=generator) / d_head**0.5)
        self.bias = nn.Parameter(torch.zeros(1))

    def key_scores(self, k: torch.Tensor) -> torch.Tensor:
        """``[batch, kv_heads, kv_len]`` scores (`common_dtype`) of ``k`` ``[batch, kv_heads,
        kv_len, d]``."""
        dtype = common_dtype(k, self.weight)
        return k.to(dtype) @ self.weight.to(dtype) + self.bias.to(dtype)


def buckets(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """``[..., len]`` int64 bucket of each vector of ``x`` ``[..., len, d]``: the sign bits of its
    projections read as a binary number."""
    dtype = common_dtype(x, projections)
    bits = (x.to(dtype) @ projections.to(x.device, dtype)) > 0
    weights = 2 ** torch.arange(projections.shape[1], device=x.device)
    return (bits.long() * weights).sum(-1)


def same_bucket(q: torch.Tensor, k: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, q_len, kv_len]`` bool: whether query ``q`` ``[batch, heads, q_len, d]``
    and key ``k`` ``[batch, kv_heads, kv_len, d]`` fall into the same bucket of ``projections``
    ``[d, n_bits]``."""
    keys = repeat_kv(k, q.shape[1])
    return buckets(q, projections).unsqueeze(-1) == buckets(keys, projections).unsqueeze(-2)


def top_keys_mask(scores: torch.Tensor, allowed: torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, heads, q_len, kv_len]`` bool: per query the ``n`` best ``scores`` ``[batch, heads,
    kv_len]`` among its ``allowed`` ``[q_len, kv_len]`` keys (all of them when fewer)."""
    ranking = scores.unsqueeze(2).masked_fill(~allowed, -float("inf"))
    top = ranking.topk(min(n, ranking.shape[-1]), dim=-1).indices
    chosen = torch.zeros_like(ranking, dtype=torch.bool).scatter_(-1, top, True)
    return chosen & allowed


@register_method
@dataclass(frozen=True, eq=False)
class HAX(SparseMethod):
    """LSH buckets plus learned key selection (see the module docstring)."""

    name = "hax"
    description = "keys in the query's LSH bucket + top-n keys by a learned key score (HAX)"
    paper = (
        "Overcoming long-context limitations of state-space models via context-dependent sparse "
        "attention, arXiv 2507.00449"
    )
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"n_select": 2}

    n_bits: int = 3
    n_select: int = 4
    seed: int = 0

    def validate(self) -> None:
        check_int("n_bits", self.n_bits, 1, 30)
        check_int("n_select", self.n_select, 0)
        check_int("seed", self.seed, 0, 2**63 - 1)

    def state_module(self, *, layer: int, heads: int, d_head: int) -> KeySelector:
        return KeySelector(d_head, self.n_bits, seed=self.seed + layer)

    def masks(
        self, q: torch.Tensor, k: torch.Tensor, state: KeySelector, causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lsh, selected)`` ``[batch, heads, q_len, kv_len]`` bool masks (visible keys only)."""
        allowed = visible(q, k, causal)
        same = same_bucket(q, k, state.projections)
        own = distances(q.shape[2], k.shape[2], q.device) == 0
        lsh = (same | own) & allowed
        scores = repeat_kv(state.key_scores(k).detach().unsqueeze(-1), q.shape[1]).squeeze(-1)
        return lsh, top_keys_mask(scores, allowed, self.n_select)

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
        state = self.default_state(q) if state is None else state
        lsh, selected = self.masks(q, k, state, causal)
        layout = Layout.from_token_mask(
            lsh | selected, block_q=block_size, block_k=block_size, causal=causal
        )
        log_gate = nn.functional.logsigmoid(state.key_scores(k))  # finite where sigmoid is 0
        gated_v = v * torch.exp(log_gate - log_gate.detach()).unsqueeze(-1).to(v.dtype)
        return [Branch("lsh+selection", layout, v=gated_v)]

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The selection of a freshly initialised key scorer."""
        return self.branches(q, k, k, causal=causal, scale=scale, block_size=block_size)[0].layout


def main() -> None:
    """Write this method's layout figure (``hax.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(HAX())


if __name__ == "__main__":
    main()

"""HAX's key selection as the authors' code does it (Zhan et al., arXiv 2507.00449; code
DeepGraphLearning/HAX, ``src/modeling_enhanced_mamba2.py`` with ``sparse_arch =
"sign_bin_lsh+key_selection"``), beside the simpler `workbench.sparse.hax`:

* **budget**: ``keys`` per query, half to each source (their ``sparse_keys // 2``);
* **LSH**: ``n_bits`` random projections drawn anew at every call (torch's default generator of the
  device, which `workbench.train` seeds per step, as `random_per_call` does); a query's bucket is
  the sign bits of its projections; each query keeps the *latest* ``keys // 2`` visible keys of
  its bucket (their ``lsh_sliding_window``);
* **key selection**: a scorer ``s_j = MLP([k_j, r_j])`` with two hidden ReLU layers of width
  ``2 d``, ``r_j`` the running sum of the queries up to key ``j`` (of all queries when not causal),
  normalised; each query keeps the ``keys // 2`` best-scoring keys it can see (their ``cumtopk``);
* **training of the scorer**: it reads detached q and k and learns only from the auxiliary loss
  ``hax_ranking`` (recorded whenever gradients are on): ``keys // 2`` keys per sequence and head
  are drawn uniformly, each gets the target ``a_j = sum_i sigmoid(scale q_i . k_j)`` over the
  queries that see it (detached), and the loss is the mean over ordered pairs of the binary
  cross-entropy of ``s_a - s_b`` against ``([a_a > a_b] + [a_a >= a_b]) / 2``.

One softmax over the union of both sets, through `kernels.api.sparse_attention`; every query keeps
at least one key (the selection always sees key 0 or its own position).

Where this departs from their code, and why: they centre q and k over the sequence before hashing
and call ``F.normalize`` with its default dimension (1: the sequence) on the hashed vectors and on
the running sums, so a position's selection depends on later positions; here nothing is centred
(the sign hash ignores a vector's length) and each running sum is normalised on its own, so a
causal model stays causal. Their attention sits beside a Mamba2 SSM and is added to its output
(times a learned per-channel factor); here it replaces a transformer layer's attention."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.layout import Layout
from kernels.reference import repeat_kv
from workbench.sparse.base import SparseMethod, check_int, visible
from workbench.sparse.branches import Branch
from workbench.sparse.hax import same_bucket, top_keys_mask
from workbench.sparse.registry import register_method
from workbench.sparse.state import SparseState, common_dtype

LOSS = "hax_ranking"


def seeded_linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default initialisation (weight and bias uniform in
    ``+-1/sqrt(fan_in)``) drawn from ``generator``."""
    layer = nn.Linear(fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(fan_out, fan_in, generator=generator) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(fan_out, generator=generator) * 2 * bound - bound)
    return layer


def running_queries(q: torch.Tensor, kv_len: int, causal: bool) -> torch.Tensor:
    """``[batch, heads, kv_len, d]``: for each key, the sum of the queries ``q`` ``[batch, heads,
    q_len, d]`` at or before its position (end-aligned, as `visible`; zero before the first
    query), or of all queries when not ``causal``, normalised to unit length (zero stays zero)."""
    if not causal:
        total = q.sum(2, keepdim=True).expand(-1, -1, kv_len, -1)
        return nn.functional.normalize(total, dim=-1)
    q_len = q.shape[2]
    sums = q.cumsum(2)
    index = torch.arange(kv_len, device=q.device) + (q_len - kv_len)  # last query at or before j
    picked = sums[:, :, index.clamp(0, q_len - 1)]
    picked = picked.masked_fill((index < 0)[None, None, :, None], 0.0)
    return nn.functional.normalize(picked, dim=-1)


def latest_keys(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` ``[..., kv_len]`` bool with only its last ``n`` True entries of each row kept."""
    from_the_end = mask.flip(-1).long().cumsum(-1).flip(-1)  # True entries at or after j
    return mask & (from_the_end <= n)


def pairwise_ranking_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over ordered pairs ``(a, b)`` of the last dimension (``a == b`` included) of the binary
    cross-entropy of ``scores[a] - scores[b]`` against ``([t_a > t_b] + [t_a >= t_b]) / 2``."""
    above = (targets.unsqueeze(-1) > targets.unsqueeze(-2)).to(scores.dtype)
    at_least = (targets.unsqueeze(-1) >= targets.unsqueeze(-2)).to(scores.dtype)
    differences = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    return nn.functional.binary_cross_entropy_with_logits(differences, (above + at_least) / 2)


class RankedKeyScorer(SparseState):
    """One layer's scorer: ``[k_j, r_j]`` (``2 d_head``) -> ``hidden_1`` -> ReLU -> ``hidden_2`` ->
    ReLU -> ``out`` (one score), hidden width ``2 d_head``, seeded by the layer."""

    def __init__(self, d_head: int, seed: int) -> None:
        super().__init__("hax_ranking")
        generator = torch.Generator().manual_seed(seed)
        width = 2 * d_head
        self.hidden_1 = seeded_linear(width, width, generator)
        self.hidden_2 = seeded_linear(width, width, generator)
        self.out = seeded_linear(width, 1, generator)

    def key_scores(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
        """``[batch, heads, kv_len]`` scores (`common_dtype`) of detached ``q`` ``[batch, heads,
        q_len, d]`` and ``k`` ``[batch, kv_heads, kv_len, d]``."""
        dtype = common_dtype(q, self.out.weight)
        q = q.detach().to(dtype)
        keys = repeat_kv(k.detach().to(dtype), q.shape[1])
        inputs = torch.cat([keys, running_queries(q, keys.shape[2], causal)], -1)
        hidden = torch.relu(
            nn.functional.linear(inputs, *self._parameters_as(self.hidden_1, dtype))
        )
        hidden = torch.relu(
            nn.functional.linear(hidden, *self._parameters_as(self.hidden_2, dtype))
        )
        return nn.functional.linear(hidden, *self._parameters_as(self.out, dtype)).squeeze(-1)

    @staticmethod
    def _parameters_as(layer: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.weight.to(dtype), layer.bias.to(dtype)


def ranking_targets(
    q: torch.Tensor, k: torch.Tensor, keys: torch.Tensor, causal: bool, scale: float
) -> torch.Tensor:
    """``[batch, heads, n]``: for the key positions ``keys`` ``[batch, heads, n]``, the sigmoid
    attention ``sum_i sigmoid(scale q_i . k_j)`` they receive from the queries that see them
    (detached q ``[batch, heads, q_len, d]``, k ``[batch, kv_heads, kv_len, d]``)."""
    dtype = common_dtype(q, k)
    q = q.detach().to(dtype)
    expanded = repeat_kv(k.detach().to(dtype), q.shape[1])
    chosen = expanded.gather(2, keys.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    weights = torch.sigmoid(scale * q @ chosen.transpose(-1, -2))  # [batch, heads, q_len, n]
    seen = visible(q, k, causal)[:, keys].permute(1, 2, 0, 3)  # [batch, heads, q_len, n]
    return (weights * seen).sum(2)


@register_method
@dataclass(frozen=True, eq=False)
class HAXRanking(SparseMethod):
    """LSH redrawn per call plus an MLP key scorer trained by a ranking loss (see the module
    docstring)."""

    name = "hax_ranking"
    description = (
        "latest keys of the query's per-call LSH bucket + top keys by an MLP score trained by a "
        "ranking loss (HAX, as the authors' code)"
    )
    paper = (
        "Overcoming long-context limitations of state-space models via context-dependent sparse "
        "attention, arXiv 2507.00449 (code DeepGraphLearning/HAX)"
    )
    input_dependent = True
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"keys": 4}

    keys: int = 8
    n_bits: int = 3
    seed: int = 0

    def validate(self) -> None:
        check_int("keys", self.keys, 2)
        check_int("n_bits", self.n_bits, 1, 30)
        check_int("seed", self.seed, 0, 2**63 - 1)

    def state_module(self, *, layer: int, heads: int, d_head: int) -> RankedKeyScorer:
        return RankedKeyScorer(d_head, seed=self.seed + layer)

    def masks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        scores: torch.Tensor,
        causal: bool,
        projections: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lsh, selected)`` ``[batch, heads, q_len, kv_len]`` bool masks (visible keys only) for
        key ``scores`` ``[batch, heads, kv_len]``; ``projections`` ``[d, n_bits]`` (default: drawn
        now from torch's default generator of ``q``'s device)."""
        if projections is None:
            projections = torch.randn(q.shape[-1], self.n_bits, device=q.device)
        allowed = visible(q, k, causal)
        same = same_bucket(q, k, projections)
        half = self.keys // 2
        return latest_keys(same & allowed, half), top_keys_mask(scores.detach(), allowed, half)

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
        scores = state.key_scores(q, k, causal)
        if torch.is_grad_enabled():
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            draws = torch.rand(scores.shape, device=q.device)
            sampled = draws.topk(min(self.keys // 2, scores.shape[-1]), dim=-1).indices
            targets = ranking_targets(q, k, sampled, causal, scale)
            state.losses[LOSS] = pairwise_ranking_loss(scores.gather(-1, sampled), targets)
        lsh, selected = self.masks(q, k, scores, causal)
        layout = Layout.from_token_mask(
            lsh | selected, block_q=block_size, block_k=block_size, causal=causal
        )
        return [Branch("lsh+selection", layout)]

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
        with torch.no_grad():
            branches = self.branches(q, k, k, causal=causal, scale=scale, block_size=block_size)
        return branches[0].layout


def main() -> None:
    """Write this method's layout figure (``hax_ranking.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(HAXRanking())


if __name__ == "__main__":
    main()

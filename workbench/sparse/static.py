"""Input-agnostic baselines of the semantic-focus paper (code rithram/spartan, ``attn_masks.py``):
random keys, strided keys, a banded window of exactly ``k`` keys, block-local ``k x k`` blocks,
the last two optionally with global tokens. One layout is shared by every batch element and head.

Global tokens: spartan appends them as extra tokens after the sequence (`toy_tasks.classification`
tasks do the same with their ``global_tokens``); ``global_at="end"`` takes the last
``global_tokens`` positions as global and lays the local pattern over the others, as spartan's
``mask_window`` / ``mask_block_local`` do. ``global_at="start"`` (the default) takes the first
positions instead, so that causal models can see them. Global rows attend to every key and every
row attends to the global keys.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from kernels.reference import attention_mask
from toy_tasks.base import TORCH_SEED_MAX
from workbench.sparse.base import StaticMethod, check_int, distances
from workbench.sparse.registry import register_method


def _query_positions(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """``[q_len, 1]`` end-aligned key-axis position of every query."""
    return torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)


GLOBAL_PLACES = ("start", "end")


def _with_global_tokens(mask: torch.Tensor, global_tokens: int) -> torch.Tensor:
    """``mask`` ``[q_len, kv_len]`` plus the global rows and columns (first positions)."""
    q_len, kv_len = mask.shape
    keys = torch.arange(kv_len, device=mask.device).unsqueeze(0)
    queries = _query_positions(q_len, kv_len, mask.device)
    return mask | (keys < global_tokens) | (queries < global_tokens)


def _with_trailing_global_tokens(
    local: torch.Tensor, q_len: int, kv_len: int, global_tokens: int
) -> torch.Tensor:
    """``[q_len, kv_len]``: ``local`` (the pattern of the first ``q_len - g`` queries over the first
    ``kv_len - g`` keys) in the top-left corner, the last ``g = global_tokens`` rows and columns
    global."""
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool, device=local.device)
    mask[: local.shape[0], : local.shape[1]] = local
    mask[q_len - global_tokens :] = True
    mask[:, kv_len - global_tokens :] = True
    return mask


@register_method
@dataclass(frozen=True, eq=False)
class RandomKeys(StaticMethod):
    """Every query keeps ``k`` keys drawn uniformly without replacement among the keys it can see
    (all of them when it sees fewer); fixed by ``seed``."""

    name = "random"
    description = "k uniformly random visible keys per query (fixed by seed)"
    paper = "Transformers learn faster with semantic focus, arXiv 2506.14095 (code rithram/spartan)"

    k: int = 5
    seed: int = 0

    def validate(self) -> None:
        check_int("k", self.k, 1)
        check_int("seed", self.seed, 0, TORCH_SEED_MAX)

    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        keys = torch.rand(q_len, kv_len, generator=generator).to(device)
        keys = keys.masked_fill(~attention_mask(q_len, kv_len, causal, device), -1.0)
        chosen = keys.topk(min(self.k, kv_len), dim=-1).indices
        mask = torch.zeros(q_len, kv_len, dtype=torch.bool, device=device)
        mask.scatter_(-1, chosen, True)
        return mask & (keys >= 0)


@register_method
@dataclass(frozen=True, eq=False)
class Strided(StaticMethod):
    """Every query keeps the keys whose distance behind it is a multiple of ``stride`` (with
    ``causal=False`` also those ahead of it at such distances)."""

    name = "strided"
    description = "keys at distances that are multiples of `stride`"
    paper = "Generating long sequences with sparse transformers, arXiv 1904.10509"

    stride: int = 8

    def validate(self) -> None:
        check_int("stride", self.stride, 1)

    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        mask = distances(q_len, kv_len, device).remainder(self.stride) == 0
        return mask


@dataclass(frozen=True, eq=False)
class _LocalWithGlobalTokens(StaticMethod):
    """A local pattern of ``k`` keys per query plus ``global_tokens`` global rows and columns, the
    first positions (``global_at="start"``) or the last (``"end"``: the local pattern covers the
    positions before them)."""

    k: int = 5
    global_tokens: int = 0
    global_at: str = "start"

    def validate(self) -> None:
        check_int("k", self.k, 1)
        check_int("global_tokens", self.global_tokens, 0)
        if self.global_at not in GLOBAL_PLACES:
            raise ValueError(f"global_at must be one of {GLOBAL_PLACES}, got {self.global_at!r}")

    @abstractmethod
    def local_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        """``[q_len, kv_len]`` bool: the local pattern, before the global tokens."""

    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        if self.global_at == "start":
            local = self.local_mask(q_len, kv_len, causal, device)
            return _with_global_tokens(local, self.global_tokens)
        g = min(self.global_tokens, q_len, kv_len)
        local = self.local_mask(q_len - g, kv_len - g, causal, device)
        return _with_trailing_global_tokens(local, q_len, kv_len, g)


@register_method
@dataclass(frozen=True, eq=False)
class Banded(_LocalWithGlobalTokens):
    """A window of exactly ``k`` keys per query, as in spartan's ``mask_window``.

    Without ``causal`` the window is ``[i - (k-1)//2, i + k - 1 - (k-1)//2]``, shifted to stay inside
    the sequence at the edges (so every row keeps exactly ``min(k, kv_len)`` keys). With ``causal`` it
    is the ``k`` latest keys ``[i - k + 1, i]``; the first rows keep fewer (a causal window cannot
    shift into the future).
    """

    name = "banded"
    description = "window of exactly k keys per query, shifted at the edges (+ global tokens)"
    paper = "Transformers learn faster with semantic focus, arXiv 2506.14095 (code rithram/spartan)"

    def local_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        position = _query_positions(q_len, kv_len, device)
        if causal:
            start = position - self.k + 1
        else:
            start = torch.clamp(position - (self.k - 1) // 2, min=0)
            start = torch.clamp(start, max=max(kv_len - self.k, 0))
        keys = torch.arange(kv_len, device=device).unsqueeze(0)
        return (keys >= start) & (keys < start + self.k)


@register_method
@dataclass(frozen=True, eq=False)
class BlockLocal(_LocalWithGlobalTokens):
    """Queries attend within ``k x k`` blocks on the (end-aligned) diagonal, as in spartan's
    ``mask_block_local`` (the last block may be smaller)."""

    name = "block_local"
    description = "k x k token blocks on the diagonal (+ global tokens)"
    paper = "Transformers learn faster with semantic focus, arXiv 2506.14095 (code rithram/spartan)"

    def local_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        position = _query_positions(q_len, kv_len, device)
        keys = torch.arange(kv_len, device=device).unsqueeze(0)
        return torch.div(keys, self.k, rounding_mode="floor") == torch.div(
            position, self.k, rounding_mode="floor"
        )


def main() -> None:
    """Write the layout figures of this module's methods."""
    from workbench.viz.methods import write_method_figure

    for method in (RandomKeys(), Strided(), Banded(), BlockLocal(global_tokens=1, global_at="end")):
        write_method_figure(method)


if __name__ == "__main__":
    main()

"""Attention sinks plus a recent window: StreamingLLM at token level and MInference's A-shape at
block level. Both are input-agnostic: one layout shared by every batch element and head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernels.layout import Layout, num_blocks
from workbench.sparse.base import (
    SparseMethod,
    StaticMethod,
    block_layout,
    check_int,
    distances,
)
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class SinkWindow(StaticMethod):
    """Every query keeps the first ``sink`` keys and the ``window`` most recent keys (distance
    ``0 .. window - 1`` behind it, end-aligned). Without ``causal`` the window is still the trailing
    one: keys ahead of the query are not kept."""

    name = "sink_window"
    description = "StreamingLLM: the first `sink` keys plus a window of the `window` latest keys"
    paper = "Efficient streaming language models with attention sinks, arXiv 2309.17453"
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"window": 16}

    sink: int = 4
    window: int = 64

    def validate(self) -> None:
        check_int("sink", self.sink, 0)
        check_int("window", self.window, 1)

    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        distance = distances(q_len, kv_len, device)
        keys = torch.arange(kv_len, device=device).unsqueeze(0)
        mask = (keys < self.sink) | ((distance >= 0) & (distance < self.window))
        return mask


@register_method
@dataclass(frozen=True, eq=False)
class AShape(SparseMethod):
    """Block-level sinks + window: every query block keeps the first ``sink_blocks`` key blocks and
    the ``window_blocks`` key blocks ending at its (end-aligned) diagonal block. No token mask, so
    kernels run whole blocks."""

    name = "a_shape"
    description = "MInference A-shape: first key blocks plus the latest key blocks (block level)"
    paper = "MInference 1.0: accelerating pre-filling for long-context LLMs, arXiv 2407.02490"
    input_dependent = False

    sink_blocks: int = 1
    window_blocks: int = 2

    def validate(self) -> None:
        check_int("sink_blocks", self.sink_blocks, 0)
        check_int("window_blocks", self.window_blocks, 1)

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        q_len, kv_len = q.shape[2], k.shape[2]
        n_q, n_k = num_blocks(q_len, block_size), num_blocks(kv_len, block_size)
        # Key block holding the last key visible to each query block (end-aligned diagonal).
        last_query = torch.clamp(
            torch.arange(n_q, device=q.device) * block_size + block_size - 1, max=q_len - 1
        )
        diagonal = (last_query + kv_len - q_len) // block_size
        offset = diagonal.unsqueeze(1) - torch.arange(n_k, device=q.device).unsqueeze(0)
        columns = torch.arange(n_k, device=q.device).unsqueeze(0)
        mask = (columns < self.sink_blocks) | ((offset >= 0) & (offset < self.window_blocks))
        return block_layout(mask[None, None], q, k, causal=causal, block_size=block_size)


def main() -> None:
    """Write the layout figures of this module's methods (``sink_window.html``, ``a_shape.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(SinkWindow())
    write_method_figure(AShape())


if __name__ == "__main__":
    main()

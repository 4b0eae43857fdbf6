"""XAttention: block importance from strided antidiagonal sums, then per query block the first and
the diagonal key block plus the best blocks until their share of the row's score reaches ``tau``
(`kernels.api.block_scores(method="antidiagonal")` and
`kernels.reference.select_cumulative_blocks`). Checked against mit-han-lab/x-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import api
from kernels.layout import Layout
from kernels.reference import select_cumulative_blocks
from workbench.sparse.base import SparseMethod, block_layout, check_fraction, check_int
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class XAttention(SparseMethod):
    """Antidiagonal block scoring with stride ``stride`` and cumulative threshold ``tau``. The paper's
    block size is 128: pass ``block_size=128`` to `select` to match it (``stride`` must divide it)."""

    name = "xattention"
    description = "blocks by strided antidiagonal scores until their mass reaches tau (XAttention)"
    paper = "XAttention: block sparse attention with antidiagonal scoring, arXiv 2503.16428"
    input_dependent = True

    tau: float = 0.9
    stride: int = 8

    def validate(self) -> None:
        check_fraction("tau", self.tau)
        check_int("stride", self.stride, 1)

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        if block_size % self.stride:
            raise ValueError(f"stride ({self.stride}) must divide block_size ({block_size})")
        scores = api.block_scores(
            q,
            k,
            method="antidiagonal",
            block_q=block_size,
            block_k=block_size,
            stride=self.stride,
            scale=scale,
            causal=causal,
        )
        mask = select_cumulative_blocks(scores, self.tau)
        return block_layout(mask, q, k, causal=causal, block_size=block_size)


def main() -> None:
    """Write this method's layout figure (``xattention.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(XAttention())


if __name__ == "__main__":
    main()

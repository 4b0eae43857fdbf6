"""Parity check (Deletang et al. 2022, a regular task): is the number of 1s in a bit string odd?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification
from toy_tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class Parity(FixedLengthClassification):
    """Bits drawn uniformly; the label is their sum modulo 2 (1: odd)."""

    name: ClassVar[str] = "parity"
    description: ClassVar[str] = "parity check: is the number of 1s in a bit string odd?"
    relevance: ClassVar[str] = "every bit (flipping any one flips the label)"
    paper: ClassVar[str] = DELETANG

    @property
    def symbols(self) -> tuple[str, ...]:
        return ("0", "1")

    @property
    def classes(self) -> tuple[str, ...]:
        return ("even", "odd")

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        device = generator.device
        bits = torch.randint(2, (batch_size, self.length), generator=generator, device=device)
        everything = torch.arange(self.length, device=device).expand(batch_size, -1)
        return Drawn(bits, bits.sum(dim=1) % 2, everything)

"""Even pairs (Deletang et al. 2022, a regular task): is the number of unequal neighbouring pairs
(``01`` and ``10``) of a bit string odd? It is odd exactly when the first and the last bit differ,
so the label depends on those two positions only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification
from toy_tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class EvenPairs(FixedLengthClassification):
    """Bits drawn uniformly; the label is the number of positions ``i`` with ``x_i != x_{i+1}``
    modulo 2 (1: odd), as Deletang et al. define it."""

    name: ClassVar[str] = "even_pairs"
    description: ClassVar[str] = "even pairs: is the number of 01 and 10 pairs in a bit string odd?"
    relevance: ClassVar[str] = "the first and the last bit (the count is odd iff they differ)"
    paper: ClassVar[str] = DELETANG
    min_length: ClassVar[int] = 2

    @property
    def symbols(self) -> tuple[str, ...]:
        return ("0", "1")

    @property
    def classes(self) -> tuple[str, ...]:
        return ("even", "odd")

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        device = generator.device
        bits = torch.randint(2, (batch_size, self.length), generator=generator, device=device)
        unequal = (bits[:, 1:] != bits[:, :-1]).sum(dim=1)
        ends = torch.tensor([0, self.length - 1], device=device).expand(batch_size, -1)
        return Drawn(bits, unequal % 2, ends)

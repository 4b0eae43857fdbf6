"""Missing duplicate (Deletang et al. 2022, a context-sensitive task): a bit string written twice
with one symbol replaced by a placeholder; the label is the missing bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification
from toy_tasks.registry import register_task

MISSING, EMPTY = 2, 3


@register_task
@dataclass(frozen=True)
class MissingDuplicate(FixedLengthClassification):
    """A string ``s`` of ``length // 2`` uniform bits, written as ``s s`` (an odd ``length`` ends
    with one empty token), with one position of ``s s`` drawn uniformly and replaced by the
    placeholder; the label is the bit it held, which its copy in the other half still shows."""

    name: ClassVar[str] = "missing_duplicate"
    description: ClassVar[str] = "missing duplicate: the bit hidden in a string written twice"
    relevance: ClassVar[str] = "the placeholder and its copy in the other half"
    paper: ClassVar[str] = DELETANG
    min_length: ClassVar[int] = 2

    @property
    def symbols(self) -> tuple[str, ...]:
        return ("0", "1", "_", "<empty>")

    @property
    def classes(self) -> tuple[str, ...]:
        return ("0", "1")

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        device, half = generator.device, self.length // 2
        bits = torch.randint(2, (batch_size, half), generator=generator, device=device)
        hidden = torch.randint(2 * half, (batch_size, 1), generator=generator, device=device)
        tokens = torch.cat([bits, bits], dim=1)
        labels = tokens.gather(1, hidden).squeeze(1)
        tokens.scatter_(1, hidden, MISSING)
        if self.length % 2:
            tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], EMPTY)], dim=1)
        copy = (hidden + half) % (2 * half)
        return Drawn(tokens, labels, torch.cat([hidden, copy], dim=1).sort(dim=1).values)

"""Cycle navigation (Deletang et al. 2022, a regular task): the final position on a cycle of
``cycle_length`` states after a string of moves, starting from state 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.base import check_int
from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification
from toy_tasks.registry import register_task

MOVES = ("left", "stay", "right")
"""Token ``t`` moves by ``t - 1`` (as Deletang et al. encode the actions)."""


@register_task
@dataclass(frozen=True)
class CycleNavigation(FixedLengthClassification):
    """Moves drawn uniformly from left / stay / right; the label is the sum of the steps (-1, 0,
    +1) modulo ``cycle_length``.

    Attributes:
        cycle_length: number of states, ``2 .. 64`` (Deletang et al.: 5).
    """

    name: ClassVar[str] = "cycle_navigation"
    description: ClassVar[str] = "cycle navigation: the final state on a 5-cycle after the moves"
    relevance: ClassVar[str] = "every move"
    paper: ClassVar[str] = DELETANG

    cycle_length: int = 5

    def validate(self) -> None:
        super().validate()
        check_int("cycle_length", self.cycle_length, 2, 64)

    @property
    def symbols(self) -> tuple[str, ...]:
        return MOVES

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(f"state {state}" for state in range(self.cycle_length))

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        device = generator.device
        moves = torch.randint(3, (batch_size, self.length), generator=generator, device=device)
        labels = (moves - 1).sum(dim=1).remainder(self.cycle_length)
        everything = torch.arange(self.length, device=device).expand(batch_size, -1)
        return Drawn(moves, labels, everything)

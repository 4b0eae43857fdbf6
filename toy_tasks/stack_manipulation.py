"""Stack manipulation (Deletang et al. 2022, a deterministic context-free task): an initial stack of
bits (given bottom to top) followed by POP / PUSH 0 / PUSH 1 instructions; a POP on an empty stack
does nothing. Deletang et al. ask for the whole final stack; the semantic-focus paper's data
(rithram/spartan, ``data/nnch/stack_manipulation``) keeps one class per example, which its files
show to be the top of the final stack, or "empty": so does this task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification
from toy_tasks.registry import register_task

POP, PUSH_0, PUSH_1 = 2, 3, 4
EMPTY_CLASS = 2


@register_task
@dataclass(frozen=True)
class StackManipulation(FixedLengthClassification):
    """The initial stack's height is drawn uniformly in ``1 .. length - 1`` and its bits
    uniformly; each of the remaining ``length - height`` instructions is drawn uniformly from POP,
    PUSH 0, PUSH 1. The label is the top bit of the final stack, or 2 when it is empty."""

    name: ClassVar[str] = "stack_manipulation"
    description: ClassVar[str] = "stack manipulation: the top of the stack after the instructions"
    relevance: ClassVar[str] = (
        "where the final top was written (initial stack or PUSH), or the POP that emptied it"
    )
    paper: ClassVar[str] = DELETANG
    min_length: ClassVar[int] = 2

    @property
    def symbols(self) -> tuple[str, ...]:
        return ("0", "1", "POP", "PUSH0", "PUSH1")

    @property
    def classes(self) -> tuple[str, ...]:
        return ("0", "1", "empty")

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        device, length = generator.device, self.length
        height = torch.randint(1, length, (batch_size, 1), generator=generator, device=device)
        bits = torch.randint(2, (batch_size, length), generator=generator, device=device)
        actions = torch.randint(
            POP, PUSH_1 + 1, (batch_size, length), generator=generator, device=device
        )
        initial = torch.arange(length, device=device) < height
        tokens = torch.where(initial, bits, actions)
        labels, relevant = run_stack(tokens, initial)
        return Drawn(tokens, labels, relevant.unsqueeze(1))


def run_stack(tokens: torch.Tensor, initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Execute the instructions of every row: ``tokens`` ``[batch, length]`` (bits where
    ``initial``, instructions after), ``initial`` ``[batch, length]`` bool. Returns the labels
    ``[batch]`` (top bit, or `EMPTY_CLASS`) and the position ``[batch]`` that wrote the final top
    (or the last POP that emptied the stack)."""
    batch, length = tokens.shape
    rows = torch.arange(batch, device=tokens.device)
    values = torch.zeros(batch, length + 1, dtype=torch.int64, device=tokens.device)
    written = torch.zeros_like(values)
    height = torch.zeros(batch, dtype=torch.int64, device=tokens.device)
    emptied = torch.zeros(batch, dtype=torch.int64, device=tokens.device)
    for t in range(length):
        token = tokens[:, t]
        push = initial[:, t] | (token >= PUSH_0)
        pop = ~initial[:, t] & (token == POP)
        bit = torch.where(initial[:, t], token, token - PUSH_0)
        slot = torch.where(push, height, length)  # length: a scratch slot
        values[rows, slot] = bit
        written[rows, slot] = t
        emptied = torch.where(pop & (height == 1), t, emptied)
        height = height + push.long() - (pop & (height > 0)).long()
    top = (height - 1).clamp(min=0)
    labels = torch.where(height > 0, values[rows, top], EMPTY_CLASS)
    return labels, torch.where(height > 0, written[rows, top], emptied)

"""Modular arithmetic with brackets (Deletang et al. 2022, a deterministic context-free task): the
value modulo 5 of a bracketed expression over +, - and * (grammar: `toy_tasks.expressions`).

Deletang et al.'s generator leaves out * unless asked (``mult=False``); the semantic-focus paper's
data (rithram/spartan, ``data/nnch/modular_arithmetic_brackets``) holds it: * makes up 6.5% of its
tokens and the value 0, which a product with 0 gives, 30% of its labels. ``multiplication=True``
(the default) follows that data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.base import check_int
from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification, numpy_generator
from toy_tasks.expressions import MAX_EXPRESSION_LENGTH, expression, symbol_names
from toy_tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class ModularArithmeticBrackets(FixedLengthClassification):
    """An expression of exactly ``length`` tokens; the label is its value.

    Attributes:
        modulus: ``2 .. 32`` (Deletang et al.: 5).
        multiplication: operators drawn from {+, -, *} (True) or {+, -}.
    """

    name: ClassVar[str] = "modular_arithmetic_brackets"
    description: ClassVar[str] = "modular arithmetic with brackets: an expression's value mod 5"
    relevance: ClassVar[str] = "every token of the expression"
    paper: ClassVar[str] = DELETANG
    max_length: ClassVar[int] = MAX_EXPRESSION_LENGTH

    modulus: int = 5
    multiplication: bool = True

    def validate(self) -> None:
        super().validate()
        check_int("modulus", self.modulus, 2, 32)
        if not isinstance(self.multiplication, bool):
            raise ValueError(f"multiplication must be a bool, got {self.multiplication!r}")

    @property
    def symbols(self) -> tuple[str, ...]:
        return symbol_names(self.modulus, 5)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(value) for value in range(self.modulus))

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        rng = numpy_generator(generator)
        drawn = [
            expression(self.length, self.modulus, rng, self.multiplication)
            for _ in range(batch_size)
        ]
        device = generator.device
        tokens = torch.tensor([tokens for tokens, _ in drawn], dtype=torch.int64, device=device)
        labels = torch.tensor([value for _, value in drawn], dtype=torch.int64, device=device)
        everything = torch.arange(self.length, device=device).expand(batch_size, -1)
        return Drawn(tokens, labels, everything)

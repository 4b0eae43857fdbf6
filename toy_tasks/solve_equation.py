"""Solve equation (Deletang et al. 2022, a deterministic context-free task): an equation
``expression = value`` (modulo 5) in which one digit of the expression is replaced by the unknown
``x``; the label is that digit. The expression has only + and -, so the solution is unique."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from toy_tasks.base import check_int
from toy_tasks.classification import DELETANG, Drawn, FixedLengthClassification, numpy_generator
from toy_tasks.expressions import (
    MAX_EXPRESSION_LENGTH,
    expression,
    symbol_id,
    symbol_names,
)
from toy_tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class SolveEquation(FixedLengthClassification):
    """An expression of ``length - 2`` tokens (`toy_tasks.expressions`), one of its digits drawn
    uniformly and replaced by ``x``, then ``=`` and the expression's value.

    Deletang et al.'s code draws a position uniformly and walks right (cyclically) to the next
    digit, which favours digits after long runs of brackets and operators; here every digit of the
    expression is equally likely.

    Attributes:
        modulus: ``2 .. 32`` (Deletang et al.: 5).
    """

    name: ClassVar[str] = "solve_equation"
    description: ClassVar[str] = "solve equation: the digit x stands for in 'expression = value'"
    relevance: ClassVar[str] = "every token of the equation"
    paper: ClassVar[str] = DELETANG
    min_length: ClassVar[int] = 3
    max_length: ClassVar[int] = MAX_EXPRESSION_LENGTH + 2

    modulus: int = 5

    def validate(self) -> None:
        super().validate()
        check_int("modulus", self.modulus, 2, 32)

    @property
    def symbols(self) -> tuple[str, ...]:
        return symbol_names(self.modulus, 7)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(value) for value in range(self.modulus))

    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        rng = numpy_generator(generator)
        unknown, equals = symbol_id("x", self.modulus), symbol_id("=", self.modulus)
        equations, solutions = [], []
        for _ in range(batch_size):
            tokens, value = expression(self.length - 2, self.modulus, rng)
            digits = [position for position, token in enumerate(tokens) if token < self.modulus]
            position = digits[int(rng.integers(len(digits)))]
            solutions.append(tokens[position])
            tokens[position] = unknown
            equations.append([*tokens, equals, value])
        device = generator.device
        everything = torch.arange(self.length, device=device).expand(batch_size, -1)
        return Drawn(
            torch.tensor(equations, dtype=torch.int64, device=device),
            torch.tensor(solutions, dtype=torch.int64, device=device),
            everything,
        )

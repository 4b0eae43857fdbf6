"""Modular arithmetic expressions with brackets of an exact length, the grammar of Deletang et al.
2022 (modular arithmetic with brackets, solve equation):

* length 1: a digit ``d``; 2: ``-d``; 3: ``(d)``; 4: ``(-d)``;
* length ``n >= 5``: ``(A o B)`` with ``o`` drawn uniformly in {+, -} or, with
  ``multiplication``, in {+, -, *}; ``A`` of a length drawn uniformly in ``1 .. n - 4`` and ``B``
  of the rest (``n - 3 - len(A)``); the operator is drawn after both operands.

Digits are drawn uniformly in ``[0, modulus)``; values are taken modulo ``modulus``. Token ids:
the digits ``0 .. modulus - 1``, then the symbols of `SYMBOLS` in that order.
"""

from __future__ import annotations

import numpy as np

SYMBOLS = ("+", "-", "*", "(", ")", "x", "=")
"""Non-digit symbols, token ids ``modulus + i``."""
MAX_EXPRESSION_LENGTH = 512
"""Longest expression (the recursion descends at most ``length / 4`` levels)."""


def symbol_names(modulus: int, count: int) -> tuple[str, ...]:
    """Names of the token ids: the digits, then the first ``count`` of `SYMBOLS`."""
    return (*(str(digit) for digit in range(modulus)), *SYMBOLS[:count])


def symbol_id(symbol: str, modulus: int) -> int:
    """Token id of one of `SYMBOLS`."""
    return modulus + SYMBOLS.index(symbol)


def expression(
    length: int, modulus: int, rng: np.random.Generator, multiplication: bool = False
) -> tuple[list[int], int]:
    """``(token ids, value)`` of an expression of exactly ``length`` tokens (see the module
    docstring)."""
    plus, minus, times, opening, closing = (symbol_id(s, modulus) for s in "+-*()")
    if length < 5:
        digit = int(rng.integers(modulus))
        body = {1: [digit], 2: [minus, digit], 3: [opening, digit, closing]}
        tokens = body.get(length, [opening, minus, digit, closing])
        return tokens, (-digit if length in (2, 4) else digit) % modulus
    left_length = int(rng.integers(1, length - 3))
    left, left_value = expression(left_length, modulus, rng, multiplication)
    right, right_value = expression(length - 3 - left_length, modulus, rng, multiplication)
    operator = int(rng.integers(3 if multiplication else 2))
    value = (left_value + right_value, left_value - right_value, left_value * right_value)
    return [opening, *left, (plus, minus, times)[operator], *right, closing], value[
        operator
    ] % modulus


def evaluate(tokens: list[int], modulus: int) -> int:
    """The value of an expression of `expression`'s grammar given as token ids (an independent
    parser: the tests' oracle)."""
    minus, times, opening = (symbol_id(s, modulus) for s in "-*(")

    def parse(start: int) -> tuple[int, int]:
        """``(value, next position)`` of the term starting at ``start``."""
        token = tokens[start]
        if token < modulus:
            return token, start + 1
        if token == minus:
            value, end = parse(start + 1)
            return -value % modulus, end
        if token != opening:
            raise ValueError(f"unexpected token {token} at {start}")
        value, position = parse(start + 1)
        while tokens[position] != symbol_id(")", modulus):
            operator = tokens[position]
            operand, position = parse(position + 1)
            if operator == times:
                value = value * operand
            else:
                value = value - operand if operator == minus else value + operand
        return value % modulus, position + 1

    value, end = parse(0)
    if end != len(tokens):
        raise ValueError(f"trailing tokens after position {end}")
    return value

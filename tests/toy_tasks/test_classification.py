"""Tests of the sequence-classification tasks (the Chomsky-hierarchy tasks and ListOps): every
label against an oracle computing it from the sequence, hand-checked examples of the oracles,
label balance, relevance, global tokens and bad parameters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import toy_tasks
from toy_tasks.base import NO_POSITION, Batch
from toy_tasks.classification import sequence_labels
from toy_tasks.expressions import evaluate as evaluate_expression
from toy_tasks.expressions import symbol_id
from toy_tasks.listops import END, OPERATOR_BASE, length_distribution
from toy_tasks.stack_manipulation import run_stack

CHOMSKY = [
    "parity",
    "even_pairs",
    "cycle_navigation",
    "missing_duplicate",
    "stack_manipulation",
    "modular_arithmetic_brackets",
    "solve_equation",
]
SMALL_LISTOPS = {"max_args": 4, "max_depth": 4, "min_length": 10, "max_length": 30}


def sample(name: str, n: int = 64, seed: int = 0, **overrides) -> tuple[Batch, list[list[int]]]:
    task = toy_tasks.get(name, **overrides)
    batch = task.sample(n, torch.Generator().manual_seed(seed))
    bodies = batch.inputs[:, : task.body_length].tolist()
    return batch, bodies


# ---------------------------------------------------------------------------- oracles
def parity(bits: list[int]) -> int:
    return sum(bits) % 2


def even_pairs(bits: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(bits)) % 2


def cycle_navigation(moves: list[int], states: int = 5) -> int:
    return sum(move - 1 for move in moves) % states


def missing_duplicate(tokens: list[int]) -> int:
    half = len(tokens) // 2
    hidden = tokens.index(2)
    return tokens[(hidden + half) % (2 * half)]


def stack_manipulation(tokens: list[int]) -> int:
    first_action = next(i for i, token in enumerate(tokens) if token >= 2)
    stack = tokens[:first_action]
    for token in tokens[first_action:]:
        if token == 2:
            if stack:
                stack.pop()
        else:
            stack.append(token - 3)
    return stack[-1] if stack else 2


def modular_arithmetic(tokens: list[int], modulus: int = 5) -> int:
    """Evaluate by rewriting the tokens as a Python expression (an oracle independent of
    `toy_tasks.expressions.evaluate`)."""
    text = "".join(
        str(t) if t < modulus else "+-*()"[t - modulus] for t in tokens
    )  # '-d' is unary minus in Python too
    return eval(text) % modulus  # tokens of a closed alphabet


def solve_equation(tokens: list[int], modulus: int = 5) -> int:
    """The digit that makes the equation hold (unique: checked)."""
    unknown, equals = symbol_id("x", modulus), symbol_id("=", modulus)
    expression, value = tokens[: tokens.index(equals)], tokens[-1]
    solutions = [
        digit
        for digit in range(modulus)
        if modular_arithmetic([digit if t == unknown else t for t in expression], modulus) == value
    ]
    assert len(solutions) == 1
    return solutions[0]


def listops(tokens: list[int]) -> int:
    """Recursive-descent evaluation (independent of `toy_tasks.listops.evaluate`)."""

    def parse(position: int) -> tuple[int, int]:
        token = tokens[position]
        if token < 10:
            return token, position + 1
        operator, values, position = token - OPERATOR_BASE, [], position + 1
        while tokens[position] != END:
            value, position = parse(position)
            values.append(value)
        ordered = sorted(values)
        middle = len(ordered) // 2
        median = (
            ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2
        )
        return [min(values), max(values), median, sum(values) % 10][operator], position + 1

    value, end = parse(0)
    assert all(token == 15 for token in tokens[end:]), "padding after the tree"
    return value


ORACLES = {
    "parity": parity,
    "even_pairs": even_pairs,
    "cycle_navigation": cycle_navigation,
    "missing_duplicate": missing_duplicate,
    "stack_manipulation": stack_manipulation,
    "modular_arithmetic_brackets": modular_arithmetic,
    "solve_equation": solve_equation,
}


def test_oracles_on_hand_checked_examples():
    # Deletang et al.'s own examples.
    assert parity([1, 0, 1, 0, 1, 0, 0]) == 1 and parity([0, 1, 1, 1, 1]) == 0
    assert even_pairs([0, 0, 1, 1, 1, 0]) == 0 and even_pairs([0, 1, 0, 1, 0, 0, 1]) == 1
    right, left, stay = 2, 0, 1
    assert cycle_navigation([right, left, stay, left, left]) == 3  # -2 = state 3
    assert cycle_navigation([right, right, right, left]) == 2
    push_1, pop = 4, 2
    assert stack_manipulation([0, 1, 1, 0, push_1, pop, pop]) == 1  # final stack 0 1 1
    assert stack_manipulation([1, 1, 0, pop, pop, pop]) == 2  # empty
    assert missing_duplicate([0, 1, 1, 0, 0, 2, 1, 0]) == 1  # 0110 0110: the missing bit is 1
    plus, minus, times, opening, closing = 5, 6, 7, 8, 9
    expression = [opening, 3, plus, opening, 4, times, 2, closing, closing]  # (3+(4*2)) = 11
    assert modular_arithmetic(expression) == 1 == evaluate_expression(expression, 5)
    assert modular_arithmetic([opening, minus, 3, closing]) == 2  # (-3) = 2 mod 5
    x, equals = 10, 11
    assert solve_equation([opening, x, minus, 4, closing, equals, 3]) == 2  # x - 4 = 3: x = 7 = 2
    mn, mx, med, sm = (OPERATOR_BASE + i for i in range(4))
    assert listops([mx, 2, 9, mn, 4, 7, END, 0, END]) == 9
    assert listops([sm, 8, 5, END]) == 3 and listops([med, 1, 2, 3, 4, END]) == 2
    assert listops([mn, 5, med, 9, 1, 6, END, END]) == 5


@pytest.mark.parametrize("name", CHOMSKY)
def test_labels_match_the_oracle(name):
    batch, bodies = sample(name, n=200)
    labels = sequence_labels(batch).tolist()
    assert labels == batch.metadata["labels"].tolist()
    assert labels == [ORACLES[name](body) for body in bodies]


def test_listops_labels_match_the_oracle_and_lengths_are_accepted():
    batch, bodies = sample("listops", n=100, **SMALL_LISTOPS)
    assert sequence_labels(batch).tolist() == [listops(body) for body in bodies]
    lengths = (batch.inputs != 15).sum(dim=1)
    assert ((lengths > 10) & (lengths < 30)).all()
    assert batch.seq_len == 29


def test_listops_default_lengths_lie_between_500_and_600():
    task = toy_tasks.get("listops")
    batch = task.sample(3, torch.Generator().manual_seed(0))
    lengths = (batch.inputs != 15).sum(dim=1)
    assert ((lengths > 500) & (lengths < 600)).all() and task.seq_len == 599
    assert sequence_labels(batch).tolist() == [listops(row) for row in batch.inputs.tolist()]


def test_listops_length_distribution_is_exact_and_matches_the_samples():
    task = toy_tasks.get("listops", **SMALL_LISTOPS)
    distribution = length_distribution(4, 4, 30)
    # By hand at max_depth 2: a digit (3/4) or a list of 2..4 digits (1/4 each third).
    shallow = length_distribution(4, 2, 10)
    assert shallow[1] == pytest.approx(0.75)
    assert shallow[4] == shallow[5] == shallow[6] == pytest.approx(0.25 / 3)
    batch, _ = sample("listops", n=600, seed=1, **SMALL_LISTOPS)
    lengths = (batch.inputs != 15).sum(dim=1).numpy()
    expected = distribution[11:30] / distribution[11:30].sum()
    observed = np.bincount(lengths, minlength=30)[11:30] / len(lengths)
    assert np.abs(observed - expected).max() < 0.04
    assert task.acceptance() == pytest.approx(distribution[11:30].sum())


def test_listops_refuses_lengths_it_would_almost_never_draw():
    with pytest.raises(ValueError, match="min_length 100 and max_length 122 accept"):
        toy_tasks.get("listops", max_args=10, max_depth=3, min_length=100, max_length=122)
    with pytest.raises(ValueError, match="min_length"):
        toy_tasks.get("listops", min_length=599)


# Label balance of the semantic-focus paper's data files (rithram/spartan, data/nnch/<task>/
# *_val.pkl, 10 seeds x 2000 examples; read there): stack manipulation 0.496 / 0.503 / 0.001,
# modular arithmetic with brackets 0.292 / 0.178 / 0.172 / 0.175 / 0.183, cycle navigation and
# solve equation 0.19-0.21 per class; the binary tasks are balanced by construction.
BALANCE = {
    "parity": [0.5, 0.5],
    "even_pairs": [0.5, 0.5],
    "missing_duplicate": [0.5, 0.5],
    "cycle_navigation": [0.2] * 5,
    "stack_manipulation": [0.4995, 0.4995, 0.001],
    "modular_arithmetic_brackets": [0.292, 0.178, 0.172, 0.175, 0.183],
    "solve_equation": [0.2] * 5,
}


@pytest.mark.parametrize("name", CHOMSKY)
def test_label_balance_matches_the_papers_data(name):
    batch, _ = sample(name, n=4000, seed=2)
    shares = torch.bincount(sequence_labels(batch), minlength=len(BALANCE[name])) / 4000
    assert torch.allclose(shares.double(), torch.tensor(BALANCE[name]).double(), atol=0.03)


def test_relevance_holds_what_each_task_defines():
    batch, bodies = sample("even_pairs", n=8)
    assert batch.relevant_positions[:, -1].tolist() == [[0, 39]] * 8
    batch, bodies = sample("missing_duplicate", n=32)
    for row, body in zip(batch.relevant_positions[:, -1].tolist(), bodies, strict=True):
        hidden = body.index(2)
        assert row == sorted([hidden, (hidden + 20) % 40])
    batch, bodies = sample("stack_manipulation", n=64)
    rows = batch.relevant_positions[:, -1, 0].tolist()
    for row, body, label in zip(rows, bodies, sequence_labels(batch).tolist(), strict=True):
        if label < 2:  # the final top was written there: a bit, or a PUSH of that bit
            assert body[row] in (label, label + 3)
            flipped = [*body]
            flipped[row] += 1 if body[row] in (0, 3) else -1  # the other bit / the other PUSH
            assert stack_manipulation(flipped) == 1 - label
        else:
            assert body[row] == 2
    batch, bodies = sample("listops", n=16, **SMALL_LISTOPS)
    for row, body in zip(batch.relevant_positions[:, -1].tolist(), bodies, strict=True):
        starts = [position for position in row if position != NO_POSITION]
        assert starts[0] == 0 and body[0] >= OPERATOR_BASE
        # The top-level arguments, evaluated on their own, give the label.
        ends = [*starts[2:], body.index(15) - 1 if 15 in body else len(body) - 1]
        values = [listops([*body[a:b], 15]) for a, b in zip(starts[1:], ends, strict=True)]
        assert listops([body[0], *values, END]) == listops(body)
    batch, _ = sample("parity", n=2)
    assert batch.relevant_positions[:, -1].tolist() == [list(range(40))] * 2


def test_stack_execution_on_hand_checked_rows():
    pop, push_0, push_1 = 2, 3, 4
    tokens = torch.tensor([[0, 1, 1, 0, push_1, pop, pop], [1, 1, 0, pop, pop, pop, push_0]])
    initial = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    labels, written = run_stack(tokens, initial)
    assert labels.tolist() == [1, 0] and written.tolist() == [2, 6]
    labels, written = run_stack(tokens[1:, :6], initial[1:, :6])
    assert labels.tolist() == [2] and written.tolist() == [5]  # the POP that emptied it


def test_global_tokens_are_appended_after_the_body():
    task = toy_tasks.get("parity", length=6, global_tokens=3)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    assert task.seq_len == 9 and task.vocab_size == 5
    assert batch.inputs[:, 6:].tolist() == [[2, 3, 4]] * 4
    assert sequence_labels(batch).tolist() == [parity(row[:6]) for row in batch.inputs.tolist()]
    assert "G2" in task.render(batch, 0)


def test_odd_missing_duplicate_ends_with_the_empty_token():
    batch, bodies = sample("missing_duplicate", n=16, length=7)
    assert all(body[-1] == 3 and body.count(2) == 1 for body in bodies)
    assert sequence_labels(batch).tolist() == [missing_duplicate(body[:6]) for body in bodies]


def test_modular_arithmetic_without_multiplication_has_no_product():
    batch, bodies = sample("modular_arithmetic_brackets", n=64, multiplication=False)
    assert all(7 not in body for body in bodies)
    assert sequence_labels(batch).tolist() == [modular_arithmetic(body) for body in bodies]


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("parity", {"length": 0}, r"length must be in \[1, 4096\]"),
        ("even_pairs", {"length": 1}, r"length must be in \[2, 4096\]"),
        ("solve_equation", {"length": 2}, r"length must be in \[3, 514\]"),
        ("modular_arithmetic_brackets", {"length": 600}, r"length must be in \[1, 512\]"),
        ("cycle_navigation", {"cycle_length": 1}, "cycle_length"),
        ("parity", {"global_tokens": 65}, r"global_tokens must be in \[0, 64\]"),
        ("modular_arithmetic_brackets", {"multiplication": 1}, "multiplication must be a bool"),
        ("listops", {"max_args": 1}, "max_args"),
    ],
)
def test_bad_parameters_name_the_field(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        toy_tasks.get(name, **overrides)

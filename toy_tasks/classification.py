"""Sequence classification: one label per sequence (the semantic-focus paper's tasks).

A classification task draws a body of ``body_length`` symbols and a class label per example
(`SequenceClassification.draw`); `SequenceClassification.sample` turns them into a `Batch` with the
shared contract:

* ``inputs`` ``[batch, seq_len]`` int64: the body, then ``global_tokens`` global tokens (token ids
  ``len(symbols) ..``, the same in every example), as the paper's code (rithram/spartan,
  ``datasets.py``) appends them for its banded / block-local variants with global tokens;
* ``targets`` ``[batch, seq_len]`` int64: the label (in ``[0, n_classes)``) at the last position,
  ``IGNORE_INDEX`` elsewhere; ``loss_mask`` is True only there (`sequence_labels` reads the labels);
* ``relevant_positions`` ``[batch, seq_len, R]``: at the last position, the body positions the
  label depends on (as each task defines them), ``NO_POSITION`` elsewhere.

The label sits at the last position so that the prediction a left-to-right reader makes there is
the scored one, and relevance holds only earlier positions; a mean-pooled classifier
(`workbench.classifier`) reads every position and is scored on the label alone.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from toy_tasks.base import (
    IGNORE_INDEX,
    NO_POSITION,
    Batch,
    ToyTask,
    check_batch_size,
    check_int,
    render_token_example,
)

MAX_GLOBAL_TOKENS = 64
"""Largest ``global_tokens`` (the paper uses 1 and 3)."""


@dataclass(frozen=True)
class Drawn:
    """What a classification task draws for a batch.

    Attributes:
        tokens: ``[batch, body_length]`` int64 symbols in ``[0, len(symbols))``.
        labels: ``[batch]`` int64 classes in ``[0, n_classes)``.
        relevant: ``[batch, R]`` int64 body positions the label depends on, ``NO_POSITION`` padded
            (at least one per example).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    relevant: torch.Tensor


@dataclass(frozen=True)
class SequenceClassification(ToyTask):
    """Base of the sequence-classification tasks (see the module docstring).

    Attributes:
        global_tokens: number of global tokens appended after the body, ``0 ..
            MAX_GLOBAL_TOKENS``.
    """

    kind: ClassVar[Literal["tokens", "continuous", "classification"]] = "classification"

    global_tokens: int = 0

    def validate(self) -> None:
        check_int("global_tokens", self.global_tokens, 0, MAX_GLOBAL_TOKENS)

    @property
    @abstractmethod
    def symbols(self) -> tuple[str, ...]:
        """Name of every body token id (``symbols[i]`` for id ``i``)."""

    @property
    @abstractmethod
    def classes(self) -> tuple[str, ...]:
        """Name of every class (``classes[c]`` for label ``c``)."""

    @property
    @abstractmethod
    def body_length(self) -> int:
        """Length of the drawn body (before the global tokens)."""

    @abstractmethod
    def draw(self, batch_size: int, generator: torch.Generator) -> Drawn:
        """Bodies, labels and relevant positions of ``batch_size`` examples (only ``generator``)."""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def vocab_size(self) -> int:
        """Body symbols and the global tokens."""
        return len(self.symbols) + self.global_tokens

    @property
    def seq_len(self) -> int:
        return self.body_length + self.global_tokens

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs, targets, loss mask ``[batch, seq_len]`` and relevant positions ``[batch,
        seq_len, R]`` as the module docstring describes; metadata ``labels`` ``[batch]``."""
        check_batch_size(batch_size)
        drawn = self.draw(batch_size, generator)
        device = drawn.tokens.device
        globals_ = torch.arange(len(self.symbols), self.vocab_size, device=device)
        inputs = torch.cat([drawn.tokens, globals_.expand(batch_size, -1)], dim=1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = drawn.labels
        relevant = torch.full(
            (batch_size, self.seq_len, drawn.relevant.shape[1]),
            NO_POSITION,
            dtype=torch.int64,
            device=device,
        )
        relevant[:, -1] = drawn.relevant
        metadata = {"labels": drawn.labels}
        return Batch(inputs, targets, targets != IGNORE_INDEX, relevant, metadata)

    def render(self, batch: Batch, index: int = 0) -> str:
        names = [
            self.symbols[token] if token < len(self.symbols) else f"G{token - len(self.symbols)}"
            for token in batch.inputs[index].tolist()
        ]
        settings = ", ".join(f"{key}={value}" for key, value in self.to_dict().items())
        title = f"{settings}  example {index}  (label at the last position)"
        return render_token_example(
            title, names, range(0, self.seq_len, 20), batch, index, self.classes.__getitem__
        )


DELETANG = (
    "Neural networks and the Chomsky hierarchy (Deletang et al.), arXiv 2207.02098; length 40 "
    "as in Transformers learn faster with semantic focus, arXiv 2506.14095"
)
"""Where the Chomsky-hierarchy tasks come from."""
MAX_LENGTH = 4096
"""Longest body of the fixed-length tasks."""


@dataclass(frozen=True)
class FixedLengthClassification(SequenceClassification):
    """A classification task whose bodies all have ``length`` symbols (the Chomsky-hierarchy
    tasks; the semantic-focus paper trains them at length 40).

    Attributes:
        length: body length, ``min_length .. MAX_LENGTH``.
    """

    min_length: ClassVar[int] = 1
    """Shortest body the task defines."""
    max_length: ClassVar[int] = MAX_LENGTH
    """Longest body it accepts."""

    length: int = 40

    def validate(self) -> None:
        super().validate()
        check_int("length", self.length, self.min_length, self.max_length)

    @property
    def body_length(self) -> int:
        return self.length


def sequence_labels(batch: Batch) -> torch.Tensor:
    """``[batch]`` int64: the class label of every example of a classification batch."""
    return batch.targets[:, -1]


def sequence_relevance(batch: Batch) -> torch.Tensor:
    """``[batch, seq_len, R]``: the relevant positions of the label at every query position (a
    reader of the whole sequence, e.g. a mean-pooled classifier, answers from all of them)."""
    last = batch.relevant_positions[:, -1:]
    return last.expand(-1, batch.seq_len, -1)


def numpy_generator(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded by one draw of ``generator`` (for generators written as
    recursive Python: they then use only the torch generator's state)."""
    seed = torch.randint(2**62, (1,), generator=generator, device=generator.device).item()
    return np.random.default_rng(seed)

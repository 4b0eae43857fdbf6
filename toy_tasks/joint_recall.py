"""Joint recall (Zhan, Zhao, Zhu, Tang 2025, "Overcoming Long-Context Limitations of State-Space
Models via Context-Dependent Sparse Attention"; the HAX paper).

Follows HAX's ``scripts/create_dataset.py``. An example holds a table ``VAL[c, k]`` of
``n_contexts x n_keys`` values drawn with replacement from ``n_values`` tokens, written twice::

    BOS  CTX_c KEY_k VAL[c,k] KEY_j VAL[c,j] ...  CTX_d ...  SEP  CTX_e KEY_k VAL[e,k] ...

Each half lists every context once (random order), each context block every key once (random order,
drawn anew per block); the second half uses new orders. Every key thus occurs in every context, with
context-dependent values. The model predicts each ``VAL[c, k]`` of the second half at its preceding
``KEY_k`` (teacher forcing): the scored predictions sit at second-half key positions and their
relevant position is that of ``VAL[c, k]`` in the first half. The inputs are the token sequence
without its last token (the targets are the sequence shifted by one).

Vocabulary: ``PAD = 0`` (reserved, never sampled), ``BOS = 1``, ``SEP = 2``, then ``VAL_0 ..``,
``KEY_0 ..``, ``CTX_0 ..`` in that order (as in HAX, so value ids do not depend on ``n_keys`` or
``n_contexts`` and key ids not on ``n_contexts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from toy_tasks.base import (
    IGNORE_INDEX,
    NO_POSITION,
    Batch,
    ToyTask,
    check_batch_size,
    check_int,
    random_permutations,
    render_token_example,
)
from toy_tasks.registry import register_task

PAD, BOS, SEP = 0, 1, 2
N_SPECIAL = 3


@register_task
@dataclass(frozen=True)
class JointRecall(ToyTask):
    """HAX's joint-recall task at one table size.

    Attributes:
        n_contexts: number of contexts ``C`` (HAX trains on 5 .. 16).
        n_keys: number of keys ``K`` per context (HAX: 5 .. 16).
        n_values: number of value tokens (HAX: 16); values are drawn with replacement.
        n_queries: number of second-half (context, key) predictions scored per example, chosen
            uniformly at random; ``None``: all ``C * K`` (HAX's multi-query setting).
    """

    name: ClassVar[str] = "joint_recall"
    kind: ClassVar[Literal["tokens", "continuous"]] = "tokens"
    description: ClassVar[str] = (
        "joint recall: VAL[c, k] after each (context, key) of the second copy of the table"
    )
    relevance: ClassVar[str] = "the value of (c, k) in the first copy"
    paper: ClassVar[str] = (
        "Overcoming long-context limitations of state-space models via context-dependent sparse "
        "attention (HAX; Zhan, Zhao, Zhu, Tang 2025)"
    )

    n_contexts: int = 5
    n_keys: int = 5
    n_values: int = 16
    n_queries: int | None = None

    def validate(self) -> None:
        check_int("n_contexts", self.n_contexts, 1)
        check_int("n_keys", self.n_keys, 1)
        check_int("n_values", self.n_values, 2)
        if self.n_queries is not None:
            check_int("n_queries", self.n_queries, 1, self.n_pairs)

    @property
    def n_pairs(self) -> int:
        """Number of (context, key) entries of the table, ``C * K``."""
        return self.n_contexts * self.n_keys

    @property
    def queries_per_example(self) -> int:
        """Number of scored predictions per example."""
        return self.n_pairs if self.n_queries is None else self.n_queries

    @property
    def first_value(self) -> int:
        """Token id of ``VAL_0``."""
        return N_SPECIAL

    @property
    def first_key(self) -> int:
        """Token id of ``KEY_0``."""
        return self.first_value + self.n_values

    @property
    def first_context(self) -> int:
        """Token id of ``CTX_0``."""
        return self.first_key + self.n_keys

    @property
    def vocab_size(self) -> int:
        return self.first_context + self.n_contexts

    @property
    def block_len(self) -> int:
        """Tokens per context block: ``CTX`` then ``K`` (key, value) pairs."""
        return 1 + 2 * self.n_keys

    @property
    def second_half_start(self) -> int:
        """Position of the first token after ``SEP``."""
        return 2 + self.n_contexts * self.block_len

    @property
    def seq_len(self) -> int:
        """Input length: ``BOS``, two halves and ``SEP``, less the final value token."""
        return 1 + 2 * self.n_contexts * self.block_len

    def token_names(self) -> list[str]:
        """Name of every token id: ``PAD BOS SEP VAL0 .. KEY0 .. CTX0 ..``."""
        return [
            "PAD",
            "BOS",
            "SEP",
            *(f"VAL{v}" for v in range(self.n_values)),
            *(f"KEY{k}" for k in range(self.n_keys)),
            *(f"CTX{c}" for c in range(self.n_contexts)),
        ]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs and targets ``[batch, seq_len]`` int64, loss mask ``[batch, seq_len]``, relevant
        positions ``[batch, seq_len, 1]``. Metadata, all ``[batch, C, K]`` and indexed by
        (context, key): ``values`` (value index in ``0 .. n_values - 1``), ``value_positions``
        (position of ``VAL[c, k]`` in the first half), ``query_positions`` (position of ``KEY_k``
        in block ``c`` of the second half) and ``scored`` (bool, whether that prediction is
        scored)."""
        check_batch_size(batch_size)
        device = generator.device
        table = torch.randint(
            self.n_values, (batch_size, self.n_pairs), generator=generator, device=device
        )
        first = self._draw_order(batch_size, generator)
        second = self._draw_order(batch_size, generator)
        scored_slots = (
            random_permutations(batch_size, self.n_pairs, generator) < self.queries_per_example
        )

        specials = torch.tensor([BOS, SEP], device=device).expand(batch_size, -1)
        sequence = torch.cat(
            [
                specials[:, :1],
                self._half_tokens(first, table),
                specials[:, 1:],
                self._half_tokens(second, table),
            ],
            dim=1,
        )
        key_offsets = self._key_offsets(device)
        # The first half starts at position 1; each value follows its key.
        value_positions = self._by_pair(first, 2 + key_offsets)
        query_positions = self.second_half_start + key_offsets
        scored = self._by_pair(second, scored_slots)
        relevant = value_positions.gather(1, second)

        inputs = sequence[:, :-1].contiguous()
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, query_positions] = torch.where(
            scored_slots, sequence[:, query_positions + 1], IGNORE_INDEX
        )
        relevant_positions = torch.full_like(inputs, NO_POSITION).unsqueeze(2)
        relevant_positions[:, query_positions, 0] = torch.where(scored_slots, relevant, NO_POSITION)
        shape = (batch_size, self.n_contexts, self.n_keys)
        metadata = {
            "values": table.view(shape),
            "value_positions": value_positions.view(shape),
            "query_positions": self._by_pair(second, query_positions).view(shape),
            "scored": scored.view(shape),
        }
        return Batch(inputs, targets, targets != IGNORE_INDEX, relevant_positions, metadata)

    def _draw_order(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, C * K]`` int64: the pair ``c * K + k`` written in each (key, value) slot of one
        half, slots in sequence order; contexts and each block's keys in random order."""
        contexts = random_permutations(batch_size, self.n_contexts, generator)
        keys = random_permutations(batch_size * self.n_contexts, self.n_keys, generator)
        keys = keys.view(batch_size, self.n_contexts, self.n_keys)
        return (contexts.unsqueeze(2) * self.n_keys + keys).flatten(1)

    def _half_tokens(self, order: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``[batch, C * block_len]``: the tokens of one half written in ``order``
        (``[batch, C * K]``, see `_draw_order`) from the value ``table`` (``[batch, C * K]``)."""
        shape = (order.shape[0], self.n_contexts, self.n_keys)
        contexts = self.first_context + order.view(shape)[:, :, :1] // self.n_keys
        keys = self.first_key + order % self.n_keys
        values = self.first_value + table.gather(1, order)
        pairs = torch.stack([keys, values], dim=2).view(*shape[:2], 2 * self.n_keys)
        return torch.cat([contexts, pairs], dim=2).flatten(1)

    def _key_offsets(self, device: torch.device) -> torch.Tensor:
        """``[C * K]`` int64: offset of each key slot from the start of its half."""
        blocks = torch.arange(self.n_contexts, device=device).unsqueeze(1) * self.block_len
        return (blocks + 1 + 2 * torch.arange(self.n_keys, device=device)).flatten()

    def _by_pair(self, order: torch.Tensor, per_slot: torch.Tensor) -> torch.Tensor:
        """``[batch, C * K]``: ``per_slot`` (``[batch or 1, C * K]`` or ``[C * K]``, in slot order
        of a half written in ``order``) re-indexed by pair ``c * K + k``."""
        return torch.empty_like(order, dtype=per_slot.dtype).scatter_(
            1, order, per_slot.expand_as(order)
        )

    def render(self, batch: Batch, index: int = 0) -> str:
        names = self.token_names()
        inputs = [names[token] for token in batch.inputs[index].tolist()]
        blocks = range(0, self.n_contexts * self.block_len, self.block_len)
        row_starts = [
            0,
            *(1 + start for start in blocks),
            self.second_half_start - 1,
            *(self.second_half_start + start for start in blocks),
        ]
        title = (
            f"joint_recall C={self.n_contexts} K={self.n_keys} n_values={self.n_values} "
            f"queries={self.queries_per_example}  example {index}"
        )
        return render_token_example(title, inputs, row_starts, batch, index, names.__getitem__)

"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al. 2023, "Zoology").

Follows zoology's ``multiquery_ar`` generator. With vocabulary ``V``, ``n`` pairs and ``L`` tokens:

- the context ``k_1 v_1 ... k_n v_n`` fills positions ``0 .. 2n - 1``; keys are distinct draws from
  ``[1, V // 2)``, values distinct draws from ``[V // 2, V)``;
- the queried keys appear again after the context, the ``i``-th queried pair at position
  ``2n + 2 g_i``, where the gaps ``g_i`` are drawn in turn without replacement from
  ``range((L - 2n) // 2)`` with probability proportional to ``(g + 1) ** (power_a - 1)`` (a power
  law: short gaps are likely);
- every other position after the context holds a filler token drawn uniformly from ``[0, V)``, so a
  filler may equal a key or a value;
- the prediction made at a query key is scored against that key's value; its relevant position is
  the value's position in the context, ``2 j + 1`` for pair ``j``.

Zoology queries every key (``n_queries=None`` here). ``n_queries=q`` queries a uniform random subset
of ``q`` pairs instead (``q = 1``: single-query recall), kept in context order so that the ``i``-th
queried pair takes the ``i``-th gap draw, as zoology's pair ``i`` does.
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
    check_float,
    check_int,
    render_token_example,
    sample_without_replacement,
)
from toy_tasks.registry import register_task

MAX_POWER_A = 16.0
"""Largest ``power_a``: the gap weights ``(g + 1) ** (power_a - 1)`` stay finite in float64 for any
sequence length (``2**63 ** 15 < 1.8e308``); such a law already puts nearly all its mass on the
largest gaps."""


@register_task
@dataclass(frozen=True)
class AssociativeRecall(ToyTask):
    """Zoology's MQAR task, with single-query recall as ``n_queries=1``.

    Attributes:
        vocab_size: ``V``; keys come from ``[1, V // 2)``, values from ``[V // 2, V)``. Zoology
            asserts ``V > seq_len`` (its code gives no reason; with the ``seq_len`` minimum below it
            guarantees enough distinct keys) and so do we.
        seq_len: ``L``, the number of input tokens. Even, as zoology asserts (query keys sit at even
            offsets after the context), and at least ``2 n_pairs + 2 n_queries`` (room for the
            context and one gap slot of two tokens per query).
        n_pairs: number of key-value pairs in the context, ``1 .. V // 2 - 1``.
        n_queries: number of pairs queried after the context, ``1 .. n_pairs``; ``None``: all.
        power_a: exponent ``a`` in ``(0, MAX_POWER_A]`` of the gap law ``p(g) ~ (g + 1) ** (a - 1)``;
            1 is uniform.
    """

    name: ClassVar[str] = "assoc_recall"
    kind: ClassVar[Literal["tokens", "continuous"]] = "tokens"
    description: ClassVar[str] = "multi-query associative recall: the value of each queried key"
    relevance: ClassVar[str] = "the key's value in the context"
    paper: ClassVar[str] = (
        "Zoology: measuring and improving recall in efficient language models (MQAR), "
        "arXiv 2312.04927"
    )

    vocab_size: int = 256
    seq_len: int = 64
    n_pairs: int = 8
    n_queries: int | None = None
    power_a: float = 0.01

    def validate(self) -> None:
        check_int("vocab_size", self.vocab_size, 4)
        check_int("n_pairs", self.n_pairs, 1, self.vocab_size // 2 - 1)
        if self.n_queries is not None:
            check_int("n_queries", self.n_queries, 1, self.n_pairs)
        check_float("power_a", self.power_a, 0.0, MAX_POWER_A)
        if self.power_a == 0:
            raise ValueError("power_a must be > 0, got 0")
        check_int("seq_len", self.seq_len, 2 * self.n_pairs + 2 * self.queries_per_example)
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even, got {self.seq_len}")
        check_int("vocab_size", self.vocab_size, self.seq_len + 1)

    @property
    def queries_per_example(self) -> int:
        """Number of scored predictions per example."""
        return self.n_pairs if self.n_queries is None else self.n_queries

    @property
    def n_gap_slots(self) -> int:
        """Number of possible query gaps, ``(L - 2 n_pairs) // 2``."""
        return (self.seq_len - 2 * self.n_pairs) // 2

    def token_name(self, token: int) -> str:
        """``K<id>`` for key tokens, ``V<id>`` for value tokens, ``<id>`` for token 0."""
        if token >= self.vocab_size // 2:
            return f"V{token}"
        return f"K{token}" if token > 0 else str(token)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs and targets ``[batch, L]`` int64, loss mask ``[batch, L]``, relevant positions
        ``[batch, L, 1]``. Metadata: ``keys`` and ``values`` ``[batch, n_pairs]`` (context order),
        ``query_pairs`` ``[batch, q]`` (increasing pair indices) and ``query_positions``
        ``[batch, q]`` (where each of them is queried)."""
        check_batch_size(batch_size)
        device, half = generator.device, self.vocab_size // 2
        keys = 1 + sample_without_replacement(batch_size, half - 1, self.n_pairs, generator)
        values = half + sample_without_replacement(
            batch_size, self.vocab_size - half, self.n_pairs, generator
        )
        pairs = self._draw_query_pairs(batch_size, generator)
        query_positions = 2 * self.n_pairs + 2 * self._draw_gaps(batch_size, generator)
        filler = torch.randint(
            self.vocab_size,
            (batch_size, self.seq_len - 2 * self.n_pairs),
            generator=generator,
            device=device,
        )
        context = torch.stack([keys, values], dim=2).flatten(1)
        inputs = torch.cat([context, filler], dim=1)
        inputs.scatter_(1, query_positions, keys.gather(1, pairs))
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets.scatter_(1, query_positions, values.gather(1, pairs))
        relevant = torch.full_like(inputs, NO_POSITION).unsqueeze(2)
        relevant.scatter_(1, query_positions.unsqueeze(2), (2 * pairs + 1).unsqueeze(2))
        metadata = {
            "keys": keys,
            "values": values,
            "query_pairs": pairs,
            "query_positions": query_positions,
        }
        return Batch(inputs, targets, targets != IGNORE_INDEX, relevant, metadata)

    def _draw_query_pairs(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, q]`` int64: per row, the indices of the queried pairs, increasing."""
        chosen = sample_without_replacement(
            batch_size, self.n_pairs, self.queries_per_example, generator
        )
        return chosen.sort(dim=1).values

    def _draw_gaps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, q]`` int64: per row, ``q`` distinct gaps drawn in turn with the power law."""
        ranks = torch.arange(1, self.n_gap_slots + 1, dtype=torch.float64, device=generator.device)
        weights = (ranks ** (self.power_a - 1)).expand(batch_size, -1)
        return torch.multinomial(
            weights, self.queries_per_example, replacement=False, generator=generator
        )

    def render(self, batch: Batch, index: int = 0) -> str:
        inputs = batch.inputs[index].tolist()
        is_query = batch.loss_mask[index].tolist()
        context = 2 * self.n_pairs
        names = [
            self.token_name(token) if pos < context or is_query[pos] else f"~{token}"
            for pos, token in enumerate(inputs)
        ]
        title = (
            f"assoc_recall V={self.vocab_size} L={self.seq_len} n_pairs={self.n_pairs} "
            f"queries={self.queries_per_example} power_a={self.power_a}  example {index}  "
            "(K key, V value, ~ filler)"
        )
        return render_token_example(
            title, names, range(0, self.seq_len, 16), batch, index, self.token_name
        )

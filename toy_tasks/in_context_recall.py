"""In-context associative recall as Zucchet et al. use it to check their emergence laws ("The
emergence of sparse attention", arXiv 2505.17863, Section 5).

One-hot tokens from a pool of ``N_tokens``; keys and values come from the same pool and each
sequence draws its own key -> value map (a uniform random permutation of the pool). The context
holds ``N_pairs`` pairs ``k_1 v_1 ... k_N v_N`` with distinct keys, then the query key ``q`` (one of
them): ``T = 2 N_pairs + 1`` tokens. Only the last prediction is scored, against the value of ``q``
(cross-entropy); its relevant position is that value's position in the context.

Repetition, as in the single-location task (our construction: the paper's text names the two
kinds, not their exact recipe):

* in-context (``burstiness`` B): the queried pair fills B of the N_pairs pair slots (the other
  pairs have distinct keys); the prediction's relevant positions are the B copies of its value;
* cross-sample (``cross_sample_p`` p): with probability p the query is the task's special key
  ``k*`` and its value the special value ``v*`` (both fixed by ``task_seed``), the rest of the map
  still random.

The paper measures emergence as the steps to 5% accuracy on test data without repetition
(``burstiness=1, cross_sample_p=0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from toy_tasks.base import (
    IGNORE_INDEX,
    NO_POSITION,
    TORCH_SEED_MAX,
    Batch,
    ToyTask,
    check_batch_size,
    check_float,
    check_int,
    random_permutations,
    render_token_example,
    sample_without_replacement,
)
from toy_tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class InContextRecall(ToyTask):
    """Zucchet et al.'s in-context associative recall.

    Attributes:
        n_tokens: ``N_tokens``, the pool of key and value tokens (the vocabulary), at least 2.
        n_pairs: ``N_pairs``, key-value pairs in the context; ``n_pairs - burstiness + 1``
            distinct keys must fit in the pool.
        burstiness: B in ``[1, n_pairs]``, the pair slots the queried pair fills.
        cross_sample_p: probability in ``[0, 1]`` that the query is the special key.
        task_seed: seed of the special key and value.
    """

    name: ClassVar[str] = "in_context_recall"
    kind: ClassVar[Literal["tokens", "continuous"]] = "tokens"
    description: ClassVar[str] = (
        "in-context associative recall: the value of the query key that ends N key-value pairs "
        "(one token pool, a fresh key-value map per sequence)"
    )
    relevance: ClassVar[str] = "the value of the queried key in the context (its B copies)"
    paper: ClassVar[str] = (
        "The emergence of sparse attention: impact of data distribution and benefits of "
        "repetition (Zucchet et al.), arXiv 2505.17863"
    )

    n_tokens: int = 64
    n_pairs: int = 8
    burstiness: int = 1
    cross_sample_p: float = 0.0
    task_seed: int = 0

    def validate(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("n_pairs", self.n_pairs, 1)
        check_int("burstiness", self.burstiness, 1, self.n_pairs)
        check_int("n_pairs", self.n_pairs, 1, self.n_tokens + self.burstiness - 1)
        check_float("cross_sample_p", self.cross_sample_p, 0.0, 1.0)
        check_int("task_seed", self.task_seed, 0, TORCH_SEED_MAX)

    @property
    def vocab_size(self) -> int:
        return self.n_tokens

    @property
    def seq_len(self) -> int:
        return 2 * self.n_pairs + 1

    @property
    def distinct_keys(self) -> int:
        return self.n_pairs - self.burstiness + 1

    def special_pair(self) -> tuple[int, int]:
        """``(k*, v*)``: the cross-sample repeated key and its value, drawn from ``task_seed``."""
        generator = torch.Generator().manual_seed(self.task_seed)
        key, value = torch.randint(self.n_tokens, (2,), generator=generator).tolist()
        return key, value

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs and targets ``[batch, T]`` int64 (the target only at ``T - 1``), loss mask
        ``[batch, T]``, relevant positions ``[batch, T, B]``. Metadata: ``keys`` and ``values``
        ``[batch, N_pairs]`` (context order), ``query`` ``[batch]`` and ``special`` ``[batch]``
        bool."""
        check_batch_size(batch_size)
        device = generator.device
        maps = random_permutations(batch_size, self.n_tokens, generator)  # key -> value
        keys = sample_without_replacement(batch_size, self.n_tokens, self.distinct_keys, generator)
        special = torch.rand(batch_size, generator=generator, device=device) < self.cross_sample_p
        if self.cross_sample_p > 0:
            keys, maps = self._special_query(keys, maps, special)
        query = keys[:, 0]
        slots = torch.cat([query[:, None].expand(-1, self.burstiness), keys[:, 1:]], dim=1)
        order = random_permutations(batch_size, self.n_pairs, generator)
        slots = slots.gather(1, order)  # [batch, N_pairs] keys in context order
        values = maps.gather(1, slots)
        last = self.seq_len - 1
        inputs = torch.cat([torch.stack([slots, values], dim=2).flatten(1), query[:, None]], 1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, last] = maps.gather(1, query[:, None])[:, 0]
        loss_mask = targets != IGNORE_INDEX
        copies = slots == query[:, None]  # exactly B per row
        pairs = torch.argsort((~copies).to(torch.int8), dim=1, stable=True)[:, : self.burstiness]
        relevant = torch.full((batch_size, self.seq_len, self.burstiness), NO_POSITION)
        relevant = relevant.to(device)
        relevant[:, last] = 2 * pairs + 1
        metadata = {"keys": slots, "values": values, "query": query, "special": special}
        return Batch(inputs, targets, loss_mask, relevant, metadata)

    def _special_query(
        self, keys: torch.Tensor, maps: torch.Tensor, special: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In the ``special`` rows, make ``k*`` the query (moving the old query where ``k*`` was,
        if it was drawn) and map it to ``v*`` (swapping two entries of the permutation)."""
        key, value = self.special_pair()
        keys, maps = keys.clone(), maps.clone()
        rows = special.nonzero().flatten()
        hit = keys[rows] == key
        where = hit.float().argmax(dim=1)
        found = hit.any(dim=1)
        keys[rows[found], where[found]] = keys[rows[found], 0]
        keys[rows, 0] = key
        holder = (maps[rows] == value).float().argmax(dim=1)  # the key now mapped to v*
        maps[rows, holder] = maps[rows, key]
        maps[rows, key] = value
        return keys, maps

    def render(self, batch: Batch, index: int = 0) -> str:
        names = [f"t{token}" for token in batch.inputs[index].tolist()]
        special = " (the special pair)" if bool(batch.metadata["special"][index]) else ""
        title = (
            f"in_context_recall N_tokens={self.n_tokens} N_pairs={self.n_pairs} "
            f"B={self.burstiness} p={self.cross_sample_p}  example {index}{special}  "
            "(pairs k v, then the query key)"
        )
        return render_token_example(
            title, names, range(0, self.seq_len, 16), batch, index, lambda token: f"t{token}"
        )

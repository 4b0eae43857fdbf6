"""Single-location regression of Zucchet et al., "The emergence of sparse attention" (2505.17863).

Tokens ``x_1 .. x_T ~ N(0, I/d)`` in ``R^d``; the target ``y* = W* x_rel`` uses a matrix ``W*``
(entries ``N(0, 1/d)``) fixed for the task by ``task_seed``. Only the prediction at the last
position is scored. Repetition controls: in-context (``burstiness`` B: the relevant vector appears
at B distinct positions) and cross-sample (with probability ``cross_sample_p`` the relevant vector
is a fixed special vector, also fixed by ``task_seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from toy_tasks.base import (
    NO_POSITION,
    TORCH_SEED_MAX,
    Batch,
    ToyTask,
    check_batch_size,
    check_float,
    check_int,
    elide,
    format_vector,
    sample_without_replacement,
)
from toy_tasks.registry import register_task

POSITIONS = ("last", "random")


@register_task
@dataclass(frozen=True)
class SingleLocationRegression(ToyTask):
    """Zucchet et al.'s single-location linear regression.

    Attributes:
        seq_len: sequence length T.
        d: token dimension.
        burstiness: B, the number of distinct positions holding the relevant vector.
        cross_sample_p: probability that the relevant vector is the task's special vector.
        position: ``"last"`` (the paper's toy model, whose attention is a free vector over
            positions, so "the relevant token location is always the same": the last position,
            unmarked; with B > 1 the copies fill the last B positions) or
            ``"random"`` (the Transformer experiments: the B positions are drawn per sequence and
            marked by an extra input feature equal to 1).
        task_seed: seed of ``W*`` and of the special vector (independent of the data generator).
    """

    name: ClassVar[str] = "single_location"
    kind: ClassVar[Literal["tokens", "continuous"]] = "continuous"
    description: ClassVar[str] = "single-location regression: y* = W* x_rel at the last token"
    relevance: ClassVar[str] = "the B copies of the relevant token"
    paper: ClassVar[str] = (
        "The emergence of sparse attention: impact of data distribution and benefits of "
        "repetition (Zucchet et al.), arXiv 2505.17863"
    )

    seq_len: int = 64
    d: int = 16
    burstiness: int = 1
    cross_sample_p: float = 0.0
    position: Literal["last", "random"] = "last"
    task_seed: int = 0

    def validate(self) -> None:
        check_int("seq_len", self.seq_len, 1)
        check_int("d", self.d, 1)
        check_int("burstiness", self.burstiness, 1, self.seq_len)
        check_float("cross_sample_p", self.cross_sample_p, 0.0, 1.0)
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        check_int("task_seed", self.task_seed, 0, TORCH_SEED_MAX)

    @property
    def d_input(self) -> int:
        return self.d + (self.position == "random")

    @property
    def d_output(self) -> int:
        return self.d

    def _fixed_draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W* [d, d]`` and the special vector ``[d]``, drawn on CPU from ``task_seed``."""
        generator = torch.Generator().manual_seed(self.task_seed)
        scale = 1.0 / math.sqrt(self.d)
        matrix = torch.randn(self.d, self.d, generator=generator) * scale
        special = torch.randn(self.d, generator=generator) * scale
        return matrix, special

    def target_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``W* [d, d]`` on ``device``: the target is ``W* @ x_rel``."""
        return self._fixed_draws()[0].to(device)

    def special_vector(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cross-sample repeated vector ``[d]`` on ``device``."""
        return self._fixed_draws()[1].to(device)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs ``[batch, T, d_input]``, targets ``[batch, T, d]`` (zero but at ``T - 1``),
        loss mask ``[batch, T]`` (only ``T - 1``), relevant positions ``[batch, T, B]`` (only row
        ``T - 1``); metadata ``relevant [batch, B]`` (sorted) and ``special [batch]`` bool."""
        check_batch_size(batch_size)
        device = generator.device
        matrix, special_vector = (t.to(device) for t in self._fixed_draws())
        scale = 1.0 / math.sqrt(self.d)
        shape = (batch_size, self.seq_len, self.d)
        x = torch.randn(shape, generator=generator, device=device) * scale
        fresh = torch.randn(batch_size, self.d, generator=generator, device=device) * scale
        special = torch.rand(batch_size, generator=generator, device=device) < self.cross_sample_p
        relevant_vector = torch.where(special[:, None], special_vector, fresh)
        relevant = self._relevant_positions(batch_size, generator)
        copies = relevant_vector[:, None, :].expand(-1, self.burstiness, -1)
        x.scatter_(1, relevant[:, :, None].expand(-1, -1, self.d), copies)

        inputs = x
        if self.position == "random":
            marker = torch.zeros(batch_size, self.seq_len, 1, device=device)
            marker.scatter_(1, relevant[:, :, None], 1.0)
            inputs = torch.cat([x, marker], dim=-1)
        last = self.seq_len - 1
        targets = torch.zeros(batch_size, self.seq_len, self.d, device=device)
        targets[:, last] = relevant_vector @ matrix.T
        loss_mask = torch.zeros(batch_size, self.seq_len, dtype=torch.bool, device=device)
        loss_mask[:, last] = True
        relevant_positions = torch.full(
            (batch_size, self.seq_len, self.burstiness), NO_POSITION, device=device
        )
        relevant_positions[:, last] = relevant
        metadata = {"relevant": relevant, "special": special}
        return Batch(inputs, targets, loss_mask, relevant_positions, metadata)

    def _relevant_positions(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, B]`` int64 sorted distinct positions of the relevant vector."""
        if self.position == "random":
            positions = sample_without_replacement(
                batch_size, self.seq_len, self.burstiness, generator
            )
        else:
            first = self.seq_len - self.burstiness
            positions = torch.arange(first, self.seq_len, device=generator.device)
            positions = positions.expand(batch_size, -1).clone()
        return positions.sort(dim=1).values

    def render(self, batch: Batch, index: int = 0) -> str:
        inputs = batch.inputs[index].cpu()
        relevant = batch.metadata["relevant"][index].tolist()
        last = self.seq_len - 1
        header = (
            f"single_location T={self.seq_len} d={self.d} B={self.burstiness} "
            f"p={self.cross_sample_p} position={self.position}  example {index}"
        )
        rows = [self._render_row(pos, inputs[pos], pos in relevant) for pos in range(self.seq_len)]
        keep = [*range(min(4, self.seq_len)), *relevant, *range(max(0, last - 2), last + 1)]
        special = bool(batch.metadata["special"][index])
        target = format_vector(batch.targets[index, last].cpu())
        footer = [
            f"scored: position {last} only; target W* x_rel = {target}",
            f"relevant positions of that prediction: {relevant}"
            f"{' (the special vector)' if special else ''}",
        ]
        return "\n".join([header, *elide(rows, keep), *footer])

    def _render_row(self, pos: int, token: torch.Tensor, is_relevant: bool) -> str:
        marker = f"  marker {int(token[self.d])}" if self.position == "random" else ""
        flag = "  <- relevant" if is_relevant else ""
        return f"{pos:4d}  {format_vector(token[: self.d])}{marker}{flag}"

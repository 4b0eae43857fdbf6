"""Shared types of the toy tasks: the `Batch` every task returns and the `ToyTask` base config.

A toy task is a frozen dataclass config. ``validate()`` raises ``ValueError`` naming the field and its
allowed range; ``sample(batch_size, generator)`` draws a `Batch` using only that generator, so the same
config and seed always give the same numbers (on the generator's device).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

IGNORE_INDEX = -100
"""Target value of token positions that are not scored (the cross-entropy ignore index)."""

NO_POSITION = -1
"""Padding value of `Batch.relevant_positions`."""


@dataclass(frozen=True)
class Batch:
    """One batch of a toy task.

    Attributes:
        inputs: ``[batch, seq]`` int64 token ids (token tasks) or ``[batch, seq, d_input]`` float32
            vectors (continuous tasks).
        targets: ``[batch, seq]`` int64 next-token targets, ``IGNORE_INDEX`` where not scored (token
            tasks), or ``[batch, seq, d_output]`` float32 regression targets (continuous tasks).
        loss_mask: ``[batch, seq]`` bool, True where the prediction made at that position is scored.
        relevant_positions: ``[batch, seq, max_relevant]`` int64: for the prediction made at position
            ``i``, the input positions a perfect model must read, padded with ``NO_POSITION``. Rows of
            unscored positions hold only padding.
        metadata: task-specific extras (latent parameters such as the regression weights), tensors with
            a leading batch dimension or plain values.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    relevant_positions: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def relevance_mask(self) -> torch.Tensor:
        """Dense ground-truth relevance ``[batch, seq (query), seq (key)]`` bool.

        ``mask[b, i, j]`` is True when position ``j`` is relevant to the prediction made at ``i``.
        """
        batch, seq, _ = self.relevant_positions.shape
        mask = torch.zeros(batch, seq, seq + 1, dtype=torch.bool, device=self.device)
        # Padding (-1) is sent to the extra column `seq`, which is dropped afterwards.
        index = torch.where(self.relevant_positions == NO_POSITION, seq, self.relevant_positions)
        mask.scatter_(2, index, True)
        return mask[:, :, :seq]

    def map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """A batch with ``function`` applied to every tensor (metadata included); plain metadata
        values are kept."""

        def apply(value: Any) -> Any:
            return function(value) if isinstance(value, torch.Tensor) else value

        return Batch(
            inputs=apply(self.inputs),
            targets=apply(self.targets),
            loss_mask=apply(self.loss_mask),
            relevant_positions=apply(self.relevant_positions),
            metadata={key: apply(value) for key, value in self.metadata.items()},
        )

    def take(self, indices: torch.Tensor) -> Batch:
        """The examples ``indices`` (``[n]`` int64, on the batch's device) as a batch: every tensor
        with a leading batch dimension (metadata included) is indexed, the rest is kept."""
        return self._per_example(lambda value: value[indices])

    def head(self, count: int) -> Batch:
        """The first ``count`` examples as a batch (all of them when it holds fewer)."""
        check_int("count", count, 1)
        indices = torch.arange(min(count, self.batch_size), device=self.inputs.device)
        return self.take(indices)

    def split(self, size: int) -> list[Batch]:
        """Consecutive chunks of at most ``size`` examples (views of this batch's tensors)."""
        check_int("size", size, 1)
        return [
            self._per_example(lambda value, start=start: value[start : start + size])
            for start in range(0, self.batch_size, size)
        ]

    def _per_example(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """`map_tensors` of ``function`` over the tensors with a leading batch dimension."""
        size = self.batch_size
        return self.map_tensors(
            lambda value: function(value) if value.dim() and value.shape[0] == size else value
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """Copy of the batch with every tensor (metadata included) on ``device``.

        ``non_blocking``: CPU tensors going to CUDA are pinned and copied asynchronously, so the
        host does not wait for the GPU (a copy from pageable memory synchronises)."""
        to_cuda = torch.device(device).type == "cuda"

        def move(value: torch.Tensor) -> torch.Tensor:
            if non_blocking and to_cuda and value.device.type == "cpu":
                value = value.pin_memory()
            return value.to(device, non_blocking=non_blocking)

        return self.map_tensors(move)


@dataclass(frozen=True)
class ToyTask:
    """Base of every task config. Subclasses are frozen dataclasses that set the class attributes
    below and register with `toy_tasks.registry.register_task`.

    Attributes:
        name: registry name.
        kind: ``"tokens"`` (int64 token ids in and out), ``"continuous"`` (float vectors) or
            ``"classification"`` (token ids in, one class label per sequence out:
            `toy_tasks.classification`).
        description: one line: the task and what a model predicts.
        relevance: one line: the ground-truth relevant positions of a prediction.
        paper: the paper the task comes from.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["tokens", "continuous", "classification"]]
    description: ClassVar[str]
    relevance: ClassVar[str]
    paper: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and its allowed range."""

    @property
    def seq_len(self) -> int:
        """Length of every sampled sequence."""
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` independent examples using only ``generator`` (and its device)."""
        raise NotImplementedError

    def render(self, batch: Batch, index: int = 0) -> str:
        """Readable multi-line rendering of example ``index``: its inputs, the scored predictions with
        their targets, and the ground-truth relevant positions of each scored prediction."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def replace(self, **changes: Any) -> ToyTask:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


TORCH_SEED_MAX = 2**64 - 1
"""Largest seed a ``torch.Generator`` takes (seeds are unsigned 64-bit)."""


def token_name(task: ToyTask, token: int) -> str:
    """The task's name of ``token`` (``token_name`` / ``token_names`` where it has one, e.g.
    ``K3``, ``V17``), else the id."""
    if hasattr(task, "token_name"):
        return task.token_name(token)
    if hasattr(task, "token_names"):
        return task.token_names()[token]
    return str(token)


def token_labels(task: ToyTask, inputs: torch.Tensor) -> list[list[str]] | None:
    """``[batch][pos]`` names of the tokens ``inputs`` ``[batch, pos]`` of a token task
    (`token_name`); None for continuous inputs (figures then show positions)."""
    if task.kind != "tokens":
        return None
    return [[token_name(task, token) for token in row] for row in inputs.tolist()]


def check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) with ``low <= value <= high``
    (``high=None``: no upper bound)."""
    allowed = f"[{low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in {allowed}, got {value}")


def check_float(name: str, value: float, low: float, high: float | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number (an int or a float, not a bool,
    nan or +-inf) with ``low <= value <= high`` (``high=None``: no upper bound)."""
    allowed = f"[{low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
        raise ValueError(f"{name} must be a finite number in {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in {allowed}, got {value}")


def is_finite(value: float) -> bool:
    """``value`` (an int or a float) is finite as a float: not nan, not +-inf, and an int within
    the float range."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_batch_size(batch_size: int) -> None:
    check_int("batch_size", batch_size, 1)


def random_permutations(
    batch_size: int, n: int, generator: torch.Generator, device: torch.device | None = None
) -> torch.Tensor:
    """``[batch_size, n]`` int64: an independent uniform permutation of ``range(n)`` per row."""
    device = generator.device if device is None else device
    keys = torch.rand(batch_size, n, generator=generator, device=device)
    return keys.argsort(dim=1)


def sample_without_replacement(
    batch_size: int, population: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """``[batch_size, k]`` int64: per row, ``k`` distinct values from ``range(population)``."""
    return random_permutations(batch_size, population, generator)[:, :k]


def render_token_example(
    title: str,
    names: Sequence[str],
    row_starts: Sequence[int],
    batch: Batch,
    index: int,
    token_name: Callable[[int], str],
    max_rows: int = 12,
    max_scored: int = 11,
) -> str:
    """Text of example ``index`` of a token task: ``title``, its inputs, its scored predictions.

    The input names (``names[i]`` for position ``i``) are split into rows starting at
    ``row_starts``, each shown as ``"  17 | K12 V140 ..."``. Each scored prediction is a line
    ``"pos 41  K12 -> V140  (reads pos 9)"``: input, target (named by ``token_name``) and relevant
    positions. Rows beyond ``max_rows`` and scored lines beyond ``max_scored`` are elided.
    """
    bounds = [*row_starts, len(names)]
    rows = [
        f"{start:4d} | {' '.join(names[start:end])}" for start, end in itertools.pairwise(bounds)
    ]
    targets = batch.targets[index].tolist()
    relevant = batch.relevant_positions[index].tolist()
    scored = [
        f"pos {pos:4d}  {names[pos]} -> {token_name(targets[pos])}  (reads pos "
        f"{', '.join(str(p) for p in relevant[pos] if p != NO_POSITION)})"
        for pos in batch.loss_mask[index].nonzero().flatten().tolist()
    ]
    return "\n".join([title, *elide_middle(rows, max_rows), *elide_middle(scored, max_scored)])


def elide_middle(lines: list[str], limit: int) -> list[str]:
    """``lines`` if at most ``limit``, else its head and tail around one ``...`` line."""
    if len(lines) <= limit:
        return lines
    tail = (limit - 1) // 2
    head = limit - 1 - tail
    return elide(lines, [*range(head), *range(len(lines) - tail, len(lines))])


def format_vector(values: torch.Tensor, max_items: int = 4) -> str:
    """``values [n]`` as ``[a, b, ...]`` rounded to 2 decimals, at most ``max_items`` shown."""
    shown = ", ".join(f"{float(v):.2f}" for v in values[:max_items])
    return f"[{shown}{', ...' if values.numel() > max_items else ''}]"


def elide(rows: list[str], keep: Iterable[int]) -> list[str]:
    """The rows whose index is in ``keep``, in order, with ``...`` for each run of dropped rows."""
    wanted = sorted(set(keep))
    lines: list[str] = []
    previous = -1
    for index in wanted:
        if index > previous + 1:
            lines.append("   ...")
        lines.append(rows[index])
        previous = index
    if previous < len(rows) - 1:
        lines.append("   ...")
    return lines

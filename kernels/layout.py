"""The one sparse-attention layout shared by every kernel, method and figure.

A `Layout` says which keys each query may attend to, at two resolutions:

* **blocks** (what the kernels iterate over): queries are cut into blocks of ``block_q`` rows and keys
  into blocks of ``block_k`` columns; for every (batch, head, query block) the layout lists the
  selected key blocks in CSR form, like FlexAttention's ``kv_num_blocks`` / ``kv_indices``:
  ``kv_indices[b, h, i, :kv_counts[b, h, i]]`` are the selected key-block indices, strictly increasing;
  entries past the count are ignored.
* **tokens** (optional refinements inside the selected blocks):
  ``causal`` keeps key ``j`` for query ``i`` only if ``j <= i + (kv_len - q_len)`` (aligned at the end,
  so decoding queries see the whole prefix); ``token_mask`` ``[b, h, q_len, kv_len]`` bool keeps
  single entries; ``row_threshold`` ``[b, h, q_len]`` keeps key ``j`` only when the scaled score
  ``scale * q_i . k_j >= row_threshold[i]`` (how token-level top-k / top-p selections run without
  an N x N mask). Every kernel recomputes the scores in its own order of summation, so a score
  within fp32 rounding of the threshold may be kept by one and dropped by another: thresholds
  made by `kernels.reference.separating_threshold` lie farther than that from every score
  (`kernels.reference.score_tolerance`), and the selection is then the same everywhere.

The batch and head dimensions of every tensor may be 1 to broadcast (one input-agnostic layout for
all heads). A query row that keeps no key gets output 0 and logsumexp -inf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_BLOCK = 16
"""Smallest block size: GPU matrix instructions need tiles of at least 16."""

MAX_BLOCK = 2**16
"""Largest block size: far beyond the kernels' tiles (16 to 256), whose loops over a block's tiles
would otherwise run on for nothing."""

MAX_LEN = 2**31 - 1
"""Longest ``q_len`` / ``kv_len``: the kernels index positions with int32."""


def num_blocks(length: int, block: int) -> int:
    """Number of blocks of size ``block`` covering ``length`` positions (the last may be partial)."""
    return -(-length // block)


def check_geometry(q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool) -> None:
    """Raise ``ValueError`` naming the first scalar of a layout out of its range: lengths in
    ``[1, MAX_LEN]``, block sizes powers of two in ``[MIN_BLOCK, MAX_BLOCK]``, ``causal`` a bool.
    Every constructor checks these before any arithmetic on them."""
    for name, length in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_LEN:
            raise ValueError(f"{name} must be a positive integer <= {MAX_LEN}, got {length!r}")
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        check_block_size(name, size)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")


def check_block_size(name: str, size: int) -> None:
    """Raise ``ValueError`` unless ``size`` is a power of two in ``[MIN_BLOCK, MAX_BLOCK]``."""
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not MIN_BLOCK <= size <= MAX_BLOCK
        or size & (size - 1)
    ):
        raise ValueError(
            f"{name} must be a power of two >= {MIN_BLOCK} and <= {MAX_BLOCK}, got {size!r}"
        )


def check_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` itself; ``ValueError`` naming ``name`` unless it is a ``torch.Tensor``."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


@dataclass(frozen=True, eq=False)
class Layout:
    """Block-sparse attention layout (see the module docstring).

    Attributes:
        kv_indices: ``[batch|1, heads|1, n_q_blocks, max_kv_blocks]`` int32 selected key blocks.
        kv_counts: ``[batch|1, heads|1, n_q_blocks]`` int32 number of valid entries per row.
        q_len, kv_len: number of query and key positions.
        block_q, block_k: block sizes (powers of two, at least ``MIN_BLOCK``).
        causal: apply the end-aligned causal mask inside the selected blocks.
        token_mask: optional ``[batch|1, heads|1, q_len, kv_len]`` bool entry-level mask.
        row_threshold: optional ``[batch|1, heads|1, q_len]`` float score threshold per query row
            (kernels compare in float32).
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    q_len: int
    kv_len: int
    block_q: int = 64
    block_k: int = 64
    causal: bool = False
    token_mask: torch.Tensor | None = None
    row_threshold: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def trusted(cls, **fields) -> Layout:
        """A layout from fields already known to be valid (every field named), without `validate`:
        validation reads tensor values, a device synchronisation that per-call views of a
        validated layout (`expand`, the kernels' custom op) must not pay."""
        layout = object.__new__(cls)
        for field in dataclasses.fields(cls):
            object.__setattr__(layout, field.name, fields[field.name])
        return layout

    # ------------------------------------------------------------------ shape facts
    @property
    def n_q_blocks(self) -> int:
        return num_blocks(self.q_len, self.block_q)

    @property
    def n_kv_blocks(self) -> int:
        return num_blocks(self.kv_len, self.block_k)

    @property
    def batch(self) -> int:
        """Batch size of the layout (1 = shared by every batch element)."""
        return self.kv_counts.shape[0]

    @property
    def heads(self) -> int:
        """Head count of the layout (1 = shared by every head)."""
        return self.kv_counts.shape[1]

    @property
    def device(self) -> torch.device:
        return self.kv_counts.device

    # ------------------------------------------------------------------ validation
    def validate(self, *, values: bool = True) -> None:
        """Raise ``ValueError`` naming the first field that breaks the layout's invariants.

        ``values=False`` checks types and shapes only; the value checks (counts in range, indices
        in range and strictly increasing) read tensor values: device synchronisations, skipped by
        the constructors whose indices are valid by construction."""
        check_geometry(self.q_len, self.kv_len, self.block_q, self.block_k, self.causal)
        check_tensor("kv_indices", self.kv_indices)
        check_tensor("kv_counts", self.kv_counts)
        indices, counts = self.kv_indices, self.kv_counts
        if indices.dtype != torch.int32 or counts.dtype != torch.int32:
            raise ValueError(
                f"kv_indices and kv_counts must be int32, got {indices.dtype} and {counts.dtype}"
            )
        if counts.dim() != 3 or counts.shape[2] != self.n_q_blocks:
            raise ValueError(
                f"kv_counts must have shape [batch, heads, n_q_blocks={self.n_q_blocks}], "
                f"got {tuple(counts.shape)}"
            )
        if indices.dim() != 4 or indices.shape[:3] != counts.shape:
            raise ValueError(
                f"kv_indices must have shape [*kv_counts.shape, max_kv_blocks] = "
                f"[{', '.join(map(str, counts.shape))}, *], got {tuple(indices.shape)}"
            )
        if indices.device != counts.device:
            raise ValueError("kv_indices and kv_counts must be on the same device")
        self._validate_token_fields()
        if values:
            self._validate_values()

    def _validate_values(self) -> None:
        indices, counts = self.kv_indices, self.kv_counts
        max_blocks = indices.shape[3]
        if counts.numel() and (counts.min() < 0 or counts.max() > max_blocks):
            raise ValueError(f"kv_counts must lie in [0, max_kv_blocks={max_blocks}]")
        valid = torch.arange(max_blocks, device=counts.device) < counts.unsqueeze(-1)
        if valid.any():
            chosen = indices[valid]
            if chosen.min() < 0 or chosen.max() >= self.n_kv_blocks:
                raise ValueError(
                    f"kv_indices out of range: valid entries must lie in "
                    f"[0, n_kv_blocks={self.n_kv_blocks}), got [{chosen.min()}, {chosen.max()}]"
                )
            step_valid = valid[..., 1:]
            if (indices[..., 1:] <= indices[..., :-1])[step_valid].any():
                raise ValueError("kv_indices must be strictly increasing (sorted, no duplicates)")

    def _validate_token_fields(self) -> None:
        if self.token_mask is not None:
            mask = check_tensor("token_mask", self.token_mask)
            if mask.dtype != torch.bool or mask.dim() != 4:
                raise ValueError(
                    f"token_mask must be a 4-d bool tensor, got {mask.dtype} {tuple(mask.shape)}"
                )
            if mask.shape[2:] != (self.q_len, self.kv_len) or not _broadcasts(mask.shape, self):
                raise ValueError(
                    f"token_mask must have shape [{self.batch}|1, {self.heads}|1, "
                    f"q_len={self.q_len}, kv_len={self.kv_len}], got {tuple(mask.shape)}"
                )
        if self.row_threshold is not None:
            threshold = check_tensor("row_threshold", self.row_threshold)
            if not threshold.is_floating_point() or threshold.dim() != 3:
                raise ValueError("row_threshold must be a 3-d floating-point tensor")
            if threshold.shape[2] != self.q_len or not _broadcasts(threshold.shape, self):
                raise ValueError(
                    f"row_threshold must have shape [{self.batch}|1, {self.heads}|1, "
                    f"q_len={self.q_len}], got {tuple(threshold.shape)}"
                )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_block_mask(
        cls,
        block_mask: torch.Tensor,
        q_len: int,
        kv_len: int,
        *,
        block_q: int = 64,
        block_k: int = 64,
        causal: bool = False,
        token_mask: torch.Tensor | None = None,
        row_threshold: torch.Tensor | None = None,
    ) -> Layout:
        """Layout from a dense ``[batch|1, heads|1, n_q_blocks, n_kv_blocks]`` bool block mask.

        With ``causal=True`` the blocks lying wholly above the diagonal are dropped.
        """
        check_geometry(q_len, kv_len, block_q, block_k, causal)
        check_tensor("block_mask", block_mask)
        expected = (num_blocks(q_len, block_q), num_blocks(kv_len, block_k))
        if block_mask.dtype != torch.bool or block_mask.dim() != 4:
            raise ValueError("block_mask must be a 4-d bool tensor [batch, heads, n_q_b, n_kv_b]")
        if tuple(block_mask.shape[2:]) != expected:
            raise ValueError(
                f"block_mask must have {expected[0]} x {expected[1]} blocks for q_len={q_len}, "
                f"kv_len={kv_len}, block_q={block_q}, block_k={block_k}; "
                f"got {tuple(block_mask.shape[2:])}"
            )
        if causal:
            block_mask = block_mask & causal_block_mask(q_len, kv_len, block_q, block_k).to(
                block_mask.device
            )
        counts = block_mask.sum(-1, dtype=torch.int32)
        # The widest row sets the index tensor's width. With one key block that is 1 whatever
        # the counts, known without reading them back (on a GPU: no host sync per call, which
        # short sequences, one block long, would otherwise pay in every layer of every step).
        one_key_block = block_mask.shape[-1] == 1
        width = 1 if one_key_block else max(int(counts.max()) if counts.numel() else 0, 1)
        # Selected block indices first (in increasing order), padding (value 0) after them.
        order = torch.sort((~block_mask).to(torch.int8), dim=-1, stable=True).indices
        indices = order[..., :width].to(torch.int32)
        valid = torch.arange(width, device=block_mask.device) < counts.unsqueeze(-1)
        indices = torch.where(valid, indices, torch.zeros_like(indices))
        layout = cls.trusted(
            kv_indices=indices.contiguous(),
            kv_counts=counts.contiguous(),
            q_len=q_len,
            kv_len=kv_len,
            block_q=block_q,
            block_k=block_k,
            causal=causal,
            token_mask=token_mask,
            row_threshold=row_threshold,
        )
        layout.validate(values=False)  # sorted, in-range indices by construction
        return layout

    @classmethod
    def from_token_mask(
        cls,
        token_mask: torch.Tensor,
        *,
        block_q: int = 64,
        block_k: int = 64,
        causal: bool = False,
        keep_token_mask: bool = True,
    ) -> Layout:
        """Layout selecting every block that holds a True entry of ``token_mask``
        ``[batch|1, heads|1, q_len, kv_len]``; with ``keep_token_mask`` the exact entries are kept
        too, otherwise whole blocks are attended."""
        check_tensor("token_mask", token_mask)
        if token_mask.dtype != torch.bool or token_mask.dim() != 4:
            raise ValueError("token_mask must be a 4-d bool tensor [batch, heads, q_len, kv_len]")
        q_len, kv_len = token_mask.shape[2:]
        check_geometry(q_len, kv_len, block_q, block_k, causal)
        if not isinstance(keep_token_mask, bool):
            raise ValueError(f"keep_token_mask must be a bool, got {keep_token_mask!r}")
        block_mask = pool_to_blocks(token_mask, block_q, block_k)
        return cls.from_block_mask(
            block_mask,
            q_len,
            kv_len,
            block_q=block_q,
            block_k=block_k,
            causal=causal,
            token_mask=token_mask if keep_token_mask else None,
        )

    @classmethod
    def dense(
        cls,
        q_len: int,
        kv_len: int,
        *,
        block_q: int = 64,
        block_k: int = 64,
        causal: bool = False,
        device: torch.device | str = "cpu",
    ) -> Layout:
        """Every key block for every query block (causal: every block on or below the diagonal)."""
        check_geometry(q_len, kv_len, block_q, block_k, causal)
        shape = (1, 1, num_blocks(q_len, block_q), num_blocks(kv_len, block_k))
        mask = torch.ones(shape, dtype=torch.bool, device=device)
        return cls.from_block_mask(
            mask, q_len, kv_len, block_q=block_q, block_k=block_k, causal=causal
        )

    @classmethod
    def from_row_threshold(
        cls,
        scores: torch.Tensor,
        threshold: torch.Tensor,
        *,
        block_q: int = 64,
        block_k: int = 64,
        causal: bool = False,
    ) -> Layout:
        """Token-level selection "keep scaled score >= threshold per row" as a layout.

        ``scores`` ``[batch, heads, q_len, kv_len]`` are the scaled scores the selection was made on
        (used only to find which blocks hold a kept entry); ``threshold`` ``[batch, heads, q_len]``.
        The layout keeps ``row_threshold`` so that kernels re-apply the exact rule.
        """
        check_tensor("scores", scores)
        check_tensor("threshold", threshold)
        if not scores.is_floating_point() or scores.dim() != 4:
            raise ValueError(
                f"scores must be a 4-d floating-point tensor [batch, heads, q_len, kv_len], "
                f"got {scores.dtype} {tuple(scores.shape)}"
            )
        q_len, kv_len = scores.shape[2:]
        check_geometry(q_len, kv_len, block_q, block_k, causal)
        if (
            not threshold.is_floating_point()
            or threshold.dim() != 3
            or threshold.shape[2] != q_len
            or not all(
                t in (1, n) for t, n in zip(threshold.shape[:2], scores.shape[:2], strict=True)
            )
        ):
            raise ValueError(
                f"threshold must be a floating-point tensor [{scores.shape[0]}|1, "
                f"{scores.shape[1]}|1, q_len={q_len}], got {threshold.dtype} "
                f"{tuple(threshold.shape)}"
            )
        if threshold.device != scores.device:
            raise ValueError(
                f"scores and threshold must be on one device, got {scores.device} and "
                f"{threshold.device}"
            )
        kept = scores >= threshold.unsqueeze(-1)
        if causal:
            kept = kept & causal_token_mask(q_len, kv_len, scores.device)
        return cls.from_block_mask(
            pool_to_blocks(kept, block_q, block_k),
            q_len,
            kv_len,
            block_q=block_q,
            block_k=block_k,
            causal=causal,
            row_threshold=threshold,
        )

    # ------------------------------------------------------------------ combinators
    def union(self, other: Layout, scores: torch.Tensor | None = None) -> Layout:
        """The entries kept by this layout or by ``other`` (same lengths and block sizes; batch
        and heads broadcast). ``scores`` (scaled, ``[batch, heads, q_len, kv_len]``) are needed
        when either layout has a ``row_threshold``; the result then holds a token mask."""
        return self._combine(other, scores, union=True)

    def intersect(self, other: Layout, scores: torch.Tensor | None = None) -> Layout:
        """The entries kept by both this layout and ``other`` (see `union`)."""
        return self._combine(other, scores, union=False)

    def _combine(self, other: Layout, scores: torch.Tensor | None, *, union: bool) -> Layout:
        if not isinstance(other, Layout):
            raise TypeError(f"other must be a Layout, got {type(other).__name__}")
        mine = (self.q_len, self.kv_len, self.block_q, self.block_k)
        theirs = (other.q_len, other.kv_len, other.block_q, other.block_k)
        if mine != theirs:
            raise ValueError(
                f"layouts must share (q_len, kv_len, block_q, block_k), got {mine} and {theirs}"
            )
        for size in ("batch", "heads"):
            if 1 not in (getattr(self, size), getattr(other, size)) and getattr(
                self, size
            ) != getattr(other, size):
                raise ValueError(
                    f"layouts must have equal {size} or one of them 1, got "
                    f"{getattr(self, size)} and {getattr(other, size)}"
                )
        block_level = self.causal == other.causal and all(
            getattr(layout, name) is None
            for layout in (self, other)
            for name in ("token_mask", "row_threshold")
        )
        causal = self.causal and other.causal
        geometry = dict(block_q=self.block_q, block_k=self.block_k, causal=causal)
        if block_level:  # the causal mask distributes over both operations
            a, b = self.block_mask(), other.block_mask()
            blocks = (a | b) if union else (a & b)
            return Layout.from_block_mask(blocks, self.q_len, self.kv_len, **geometry)
        a, b = self.to_dense(scores), other.to_dense(scores)
        mask = (a | b) if union else (a & b)
        return Layout.from_token_mask(mask, **geometry)

    # ------------------------------------------------------------------ views
    def block_mask(self) -> torch.Tensor:
        """Dense ``[batch|1, heads|1, n_q_blocks, n_kv_blocks]`` bool mask of the listed blocks."""
        width = self.kv_indices.shape[-1]
        valid = torch.arange(width, device=self.device) < self.kv_counts.unsqueeze(-1)
        mask = torch.zeros(
            *self.kv_counts.shape, self.n_kv_blocks + 1, dtype=torch.bool, device=self.device
        )
        index = torch.where(valid, self.kv_indices.long(), self.n_kv_blocks)
        mask.scatter_(-1, index, True)
        return mask[..., : self.n_kv_blocks]

    def to_dense(
        self, scores: torch.Tensor | None = None, rows: range | None = None
    ) -> torch.Tensor:
        """Token-level ``[batch, heads, q_len, kv_len]`` bool mask of the entries the layout keeps:
        the definition that the Triton kernels apply tile by tile (`kernels.triton.common`).

        ``rows`` (a ``range`` of query positions with step 1) gives only those rows, ``[batch,
        heads, len(rows), kv_len]``, equal to the full mask's rows without building it (memory
        ``O(len(rows) x kv_len)``). ``row_threshold`` can only be applied given the scaled
        ``scores`` (of the rows asked for); without them a layout with a threshold raises.
        """
        rows = range(self.q_len) if rows is None else rows
        if not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start <= rows.stop:
            raise ValueError(f"rows must be a range with step 1 inside [0, q_len], got {rows!r}")
        if rows.stop > self.q_len:
            raise ValueError(f"rows must lie inside [0, q_len = {self.q_len}], got {rows!r}")
        # A block longer than the sequence is its only block: repeat it to the sequence's length.
        block_rows, columns = min(self.block_q, self.q_len), min(self.block_k, self.kv_len)
        first_block = rows.start // block_rows
        last_block = -(-rows.stop // block_rows)
        blocks = self.block_mask()[:, :, first_block:last_block]
        mask = blocks.repeat_interleave(block_rows, dim=2).repeat_interleave(columns, dim=3)
        offset = rows.start - first_block * block_rows
        mask = mask[:, :, offset : offset + len(rows), : self.kv_len]
        if self.causal:
            mask = mask & causal_token_mask(self.q_len, self.kv_len, self.device, rows)
        if self.token_mask is not None:
            mask = mask & self.token_mask[:, :, rows.start : rows.stop].to(self.device)
        if self.row_threshold is not None:
            if scores is None:
                raise ValueError("this layout has a row_threshold: pass the scaled scores")
            threshold = self.row_threshold[:, :, rows.start : rows.stop]
            mask = mask & (scores >= threshold.unsqueeze(-1))
        return mask

    def block_density(self) -> float:
        """Fraction of the (q_len x kv_len) entries inside listed blocks (what a kernel computes),
        averaged over batch and heads; partial edge blocks count only their real entries."""
        q_sizes = _block_sizes(self.q_len, self.block_q, self.device)
        k_sizes = _block_sizes(self.kv_len, self.block_k, self.device)
        area = (q_sizes[:, None] * k_sizes[None, :]).to(torch.float64)
        covered = (self.block_mask().to(torch.float64) * area).sum((-1, -2))
        return (covered / (self.q_len * self.kv_len)).mean().item()

    def expand(self, batch: int, heads: int) -> Layout:
        """The same layout with explicit ``batch`` and ``heads`` dimensions (no copy)."""

        def grow(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            return tensor.expand(batch, heads, *tensor.shape[2:])

        return Layout.trusted(
            **{
                **vars(self),
                "kv_indices": grow(self.kv_indices),
                "kv_counts": grow(self.kv_counts),
                "token_mask": grow(self.token_mask),
                "row_threshold": grow(self.row_threshold),
            }
        )

    def take_heads(self, heads: Sequence[int]) -> Layout:
        """The layout of the listed heads only (a field shared by every head, head dimension 1,
        stays shared)."""

        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None or tensor.shape[1] == 1:
                return tensor
            return tensor[:, list(heads)]

        return Layout.trusted(
            **{
                **vars(self),
                **{
                    name: take(getattr(self, name))
                    for name in ("kv_indices", "kv_counts", "token_mask", "row_threshold")
                },
            }
        )

    def transpose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Column view for backward passes: ``(q_indices, q_counts)`` with shapes
        ``[batch|1, heads|1, n_kv_blocks, max_q_blocks]`` and ``[batch|1, heads|1, n_kv_blocks]``,
        listing for every key block the query blocks that select it (increasing, int32);
        ``max_q_blocks = n_q_blocks`` (a bound known without reading the counts: no device sync)."""
        columns = self.block_mask().transpose(-1, -2)
        return true_positions(columns, fill=0, width=max(self.n_q_blocks, 1))

    def __repr__(self) -> str:
        extras = [
            name for name in ("token_mask", "row_threshold") if getattr(self, name) is not None
        ]
        return (
            f"Layout(batch={self.batch}, heads={self.heads}, q_len={self.q_len}, "
            f"kv_len={self.kv_len}, block_q={self.block_q}, block_k={self.block_k}, "
            f"causal={self.causal}, block_density={self.block_density():.3f}"
            + (f", with {' and '.join(extras)}" if extras else "")
            + ")"
        )


def true_positions(
    mask: torch.Tensor, *, fill: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., n]`` bool -> ``(positions [..., width], counts [...])`` int32: the positions of each
    row's True entries in increasing order, padded with ``fill``, and their number. ``width``
    defaults to the largest count (read from the device: one synchronisation); rows with more
    are cut."""
    counts = mask.sum(-1, dtype=torch.int32)
    if width is None:
        width = int(counts.max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    valid = torch.arange(order.shape[-1], device=mask.device) < counts.unsqueeze(-1)
    return torch.where(valid, order, fill).to(torch.int32).contiguous(), counts


def causal_token_mask(
    q_len: int, kv_len: int, device: torch.device | str, rows: range | None = None
) -> torch.Tensor:
    """``[q_len, kv_len]`` bool: key ``j`` visible to query ``i`` iff ``j <= i + kv_len - q_len``;
    only the query rows in ``rows`` (``[len(rows), kv_len]``) when given."""
    rows = range(q_len) if rows is None else rows
    last_keys = torch.arange(rows.start, rows.stop, device=device).unsqueeze(1) + (kv_len - q_len)
    return torch.arange(kv_len, device=device).unsqueeze(0) <= last_keys


def causal_block_mask(q_len: int, kv_len: int, block_q: int, block_k: int) -> torch.Tensor:
    """``[n_q_blocks, n_kv_blocks]`` bool: blocks holding at least one causally visible entry."""
    last_query = torch.clamp(
        torch.arange(num_blocks(q_len, block_q)) * block_q + block_q - 1, max=q_len - 1
    )
    first_key = torch.arange(num_blocks(kv_len, block_k)) * block_k
    return first_key.unsqueeze(0) <= (last_query + kv_len - q_len).unsqueeze(1)


def pool_to_blocks(mask: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """``[..., q_len, kv_len]`` bool -> ``[..., n_q_blocks, n_kv_blocks]``: any True in the block."""
    q_len, kv_len = mask.shape[-2:]
    # A block longer than the sequence is its only block: pool over the sequence, never pad to it.
    block_q, block_k = min(block_q, max(q_len, 1)), min(block_k, max(kv_len, 1))
    padded = torch.nn.functional.pad(
        mask,
        (
            0,
            num_blocks(kv_len, block_k) * block_k - kv_len,
            0,
            num_blocks(q_len, block_q) * block_q - q_len,
        ),
    )
    *lead, rows, cols = padded.shape
    tiles = padded.reshape(*lead, rows // block_q, block_q, cols // block_k, block_k)
    return tiles.any(dim=-1).any(dim=-2)


def _block_sizes(length: int, block: int, device: torch.device) -> torch.Tensor:
    starts = torch.arange(num_blocks(length, block), device=device) * block
    return torch.clamp(length - starts, max=block)


def _broadcasts(shape: torch.Size, layout: Layout) -> bool:
    return shape[0] in (1, layout.batch) and shape[1] in (1, layout.heads)

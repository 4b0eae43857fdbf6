"""Harvesting attention outputs (``hook_z``) for SAEs through the capture pass.

Kissane et al.'s layout: per token, the outputs ``z`` of every head of one layer concatenated,
``d_in = n_heads * d_head``; here each row is kept as ``[n_heads, d_head]`` (sae-lens's
``reshape_activations="hook_z"`` flattens it the same way). Rows come from one captured forward per
batch (`workbench.capture.capturing`), so they are exactly what the layer produced: under a sparse
method (a `SparsePlan`) the sparse output, as `sparsify` computes it.

`ActivationStore` bounds memory: rows go to chunk files of `ActivationStore.chunk_rows` rows
(safetensors, written atomically) once the in-memory buffer is full, and `ActivationStore.batches`
streams shuffled batches from a few chunks at a time (a mixing buffer). Every row keeps where it
came from (example and position), so its example can be drawn again from the seed for attribution.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.capture import LayerCapture, SparsePlan, capturing, run_model
from workbench.io import atomic_write_json, atomic_write_safetensors

CHUNK = "chunk-{:05d}.safetensors"
INDEX = "store.json"


@dataclass
class ActivationStore:
    """Rows ``[n_heads, d_head]`` of one layer's ``z`` with their origin ``(example, position)``.

    Attributes:
        shape: ``(n_heads, d_head)`` of a row.
        folder: where chunks go once ``chunk_rows`` rows are buffered (None: all in memory).
        chunk_rows: rows per chunk file.
        info: how the rows were harvested (JSON-ready; saved in ``store.json``).
    """

    shape: tuple[int, int]
    folder: Path | None = None
    chunk_rows: int = 65536
    info: dict[str, Any] = field(default_factory=dict)
    _rows: list[torch.Tensor] = field(default_factory=list, repr=False)
    _origins: list[torch.Tensor] = field(default_factory=list, repr=False)
    _buffered: int = 0
    _chunks: int = 0
    _total: int = 0

    @property
    def d_in(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self._total

    def add(self, rows: torch.Tensor, origins: torch.Tensor) -> None:
        """Append ``rows`` ``[n, n_heads, d_head]`` (stored float32 on CPU) and their ``origins``
        ``[n, 2]`` int64 (example index, position)."""
        if tuple(rows.shape[1:]) != self.shape:
            raise ValueError(
                f"rows must be [n, {self.shape[0]}, {self.shape[1]}], got {rows.shape}"
            )
        self._rows.append(rows.detach().float().cpu())
        self._origins.append(origins.cpu())
        self._buffered += rows.shape[0]
        self._total += rows.shape[0]
        if self.folder is not None and self._buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one chunk (no-op in memory or when nothing is buffered)."""
        if self.folder is None or not self._rows:
            return
        tensors = {"z": torch.cat(self._rows), "origins": torch.cat(self._origins)}
        atomic_write_safetensors(self.folder / CHUNK.format(self._chunks), tensors)
        self._chunks += 1
        self._rows, self._origins, self._buffered = [], [], 0
        atomic_write_json(self.folder / INDEX, self._index())

    def _index(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "rows": self._total, "chunks": self._chunks} | {
            "info": self.info
        }

    def _parts(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(z, origins)`` of every chunk on disk, then of the buffered rows."""
        from safetensors.torch import load_file

        for index in range(self._chunks):
            tensors = load_file(self.folder / CHUNK.format(index))
            yield tensors["z"], tensors["origins"]
        if self._rows:
            yield torch.cat(self._rows), torch.cat(self._origins)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows ``[N, n_heads, d_head]`` and origins ``[N, 2]`` (loads every chunk)."""
        parts = list(self._parts())
        if not parts:
            return torch.empty(0, *self.shape), torch.empty(0, 2, dtype=torch.int64)
        return torch.cat([z for z, _ in parts]), torch.cat([o for _, o in parts])

    def batches(
        self, batch_size: int, generator: torch.Generator, *, mix_chunks: int = 4
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled batches ``[batch_size, n_heads * d_head]`` (flat, as sae-lens trains):
        every pass visits the chunks in a random order, ``mix_chunks`` at a time, shuffled
        together."""
        if self._total < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {self._total} rows harvested")
        while True:
            parts = list(self._parts())
            order = torch.randperm(len(parts), generator=generator).tolist()
            for start in range(0, len(order), mix_chunks):
                rows = torch.cat([parts[i][0] for i in order[start : start + mix_chunks]])
                rows = rows[torch.randperm(rows.shape[0], generator=generator)].flatten(1)
                for first in range(0, rows.shape[0] - batch_size + 1, batch_size):
                    yield rows[first : first + batch_size]

    def save(self) -> None:
        """Write what is buffered and the index (a store with a folder)."""
        if self.folder is None:
            raise ValueError("an in-memory store has no folder to save to")
        self.flush()
        atomic_write_json(self.folder / INDEX, self._index())

    @classmethod
    def load(cls, folder: str | Path) -> ActivationStore:
        """The store saved in ``folder``."""
        folder = Path(folder)
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        store = cls(tuple(index["shape"]), folder, info=index["info"])
        store._chunks, store._total = index["chunks"], index["rows"]
        return store


def layer_rows(capture: LayerCapture, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` rows ``[n, n_heads, d_head]`` of a captured layer at the positions ``keep``
    ``[batch, pos]`` (True = kept), and their ``(batch index, position)`` ``[n, 2]``."""
    z = capture.z.transpose(1, 2)  # [batch, pos, heads, d_head]
    where = keep.to(z.device).nonzero()
    return z[where[:, 0], where[:, 1]], where


CHUNK_BYTES = 64 * 2**20
"""Size of a chunk file (a store with a folder)."""


def harvest(
    model: nn.Module,
    batches: Iterable[tuple[Any, torch.Tensor]],
    layer: int,
    *,
    sparse: SparsePlan | None = None,
    folder: str | Path | None = None,
    info: dict[str, Any] | None = None,
    progress: bool = False,
    total: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ActivationStore:
    """Run ``model`` on each ``(inputs, keep)`` of ``batches`` (``keep`` ``[batch, pos]`` bool: the
    positions whose rows to store) and return layer ``layer``'s ``z`` rows in an `ActivationStore`
    (in memory, or in chunks of `CHUNK_BYTES` under ``folder``, which must not hold a store);
    example indices count on across batches. ``sparse``: the method the model attends with;
    ``info``: recorded with the store; ``progress``: a tqdm bar over ``total`` batches."""
    from tqdm.auto import tqdm

    if folder is not None and (Path(folder) / INDEX).exists():
        raise FileExistsError(f"{folder} already holds an activation store")
    store: ActivationStore | None = None
    offset = 0
    for inputs, keep in tqdm(
        batches, total=total, desc=f"harvest layer {layer}", disable=not progress
    ):
        captured: list[LayerCapture] = []
        with (
            torch.no_grad(),
            capturing(model, layers=[layer], sparse=sparse, on_layer=captured.append),
        ):
            run_model(model, inputs, **(forward_kwargs or {}))
        (capture,) = captured
        z, where = layer_rows(capture, keep)
        if store is None:
            shape = (z.shape[1], z.shape[2])
            chunk_rows = max(1024, CHUNK_BYTES // (4 * shape[0] * shape[1]))
            folder_path = None if folder is None else Path(folder)
            if folder_path is not None:
                folder_path.mkdir(parents=True, exist_ok=True)
            store = ActivationStore(shape, folder_path, chunk_rows, info=dict(info or {}))
        store.add(z, where.cpu() + torch.tensor([offset, 0]))
        offset += keep.shape[0]
    if store is None:
        raise ValueError("batches yielded nothing to harvest")
    if store.folder is not None:
        store.save()
    return store

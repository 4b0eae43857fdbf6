"""Attention tracer: per layer and head, streaming row statistics and (opt-in) full patterns.

``trace(model, inputs, config)`` runs one forward pass and returns a `Trace`;
``with tracing(model, config) as recorder: model(...)`` does the same around any forward calls
(``recorder.trace()`` afterwards). Both work on TransformerLens ``HookedTransformer`` /
``HookedEncoder`` and Hugging Face ``PreTrainedModel`` s, and never change the model's outputs.

* **Statistics** (``stats=True``): the traced layers are captured by the capture pass
  (`workbench.capture.capturing`: they run the model's own attention, so outputs stay bitwise
  identical) and `kernels.api.row_stats` runs on each layer's q and k as soon as the layer has
  run (one layer's tensors at a time): entropy (nats), max weight, logsumexp, top-p
  budgets ``k_p`` for ``ps``, sink mass (mass on the first ``sink_tokens`` real positions) and, when
  ``relevant_positions`` (``[batch, q_len, R]``, -1 padded, e.g. a toy task's
  `Batch.relevant_positions`) is given, the mass on them. With the Triton kernels these never
  materialise N x N. Padded keys (HF ``attention_mask``, TL masks) are excluded: examples with
  padding are computed one by one on their real tokens (relevant positions are remapped); rows of
  padded queries hold NaN (budgets 0).
* **Sparse models** (``sparse=method``): the layers of ``sparse_layers`` run ``method`` as
  `workbench.sparse.patch.sparsify` does (the same pass computes the sparse output and records),
  so the trace describes the model that attends sparsely. On those layers the statistics are those
  of the attention actually used (the softmax over the method's selection: entropy, top-p budgets,
  relevant mass of what the layer attends to) and `Trace.dense_stats` holds the dense softmax of
  the same q and k beside them.
* **Patterns** (``patterns=True``, opt-in, memory-guarded): TransformerLens patterns are TL's own
  (``hook_pattern`` fires: equal to ``run_with_cache``); Hugging Face patterns from the
  module's eager softmax, computed for the traced layers only (the eager path is forced only where
  patterns are requested, so those layers may differ from sdpa at float rounding).
"""

from __future__ import annotations

import json
import math
import numbers
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from kernels import api
from kernels.layout import MAX_LEN, Layout
from kernels.reference import check_ps, repeat_kv, scaled_scores
from toy_tasks.base import check_int
from workbench.attention import check_layers, is_transformer_lens, model_size
from workbench.capture import AttentionCache, LayerCapture, SparsePlan, capturing, run_model
from workbench.io import atomic_write_json, atomic_write_safetensors
from workbench.metrics.stability import TRACE_STATISTICS, trace_stability
from workbench.sparse.base import SparseMethod

STATISTICS = ("entropy", "max_weight", "lse", "sink_mass", "relevant_mass", *TRACE_STATISTICS)
"""Float statistics of a `Trace`, each ``[batch, heads, q_len]`` (the softmax-stability ones with
``TraceConfig(stability=True)``); plus ``top_p_budget``."""

GIB = 1024**3


@dataclass(frozen=True)
class TraceConfig:
    """What to record.

    Attributes:
        layers: layer indices (None = all).
        heads: head indices (None = all).
        patterns: record full attention patterns ``[batch, heads, kept_q, kv_len]`` (opt-in).
        pattern_device: ``"cpu"`` or ``"same"`` (the model's device) for stored patterns.
        pattern_queries: keep only these query positions of the patterns (None = all).
        max_pattern_bytes: refuse (``ValueError``) to record patterns estimated larger than this.
        stats: record streaming row statistics.
        ps: masses of the top-p budgets, in (0, 1]; empty: no budgets.
        sink_tokens: the sink mass is the mass on the first ``sink_tokens`` real positions.
        stability: also record the softmax-stability statistics of each row
            (`workbench.metrics.stability.trace_stability`: the Jacobian's spectral and Frobenius
            norms of the softmax the layer used, the top-k margin of its scores); they take
            ``O(256 x kv_len)`` memory per head (``O(q_len x kv_len)`` on padded batches through a
            sparse method, whose selection is gathered per example).
        impl: kernels implementation for `kernels.api.row_stats` (and for attention with
            ``attention="kernels"``).
        attention: how traced layers compute their output while statistics are recorded:
            ``"model"`` runs the model's own attention code (outputs bitwise unchanged; TL's code
            materialises N x N scores as it always does); ``"kernels"`` runs dense attention through
            `kernels.api.sparse_attention` (flash-style with Triton: no N x N anywhere, outputs
            equal up to float rounding). Use ``"kernels"`` for long inputs. Layers whose patterns
            are recorded always run the model's code.
    """

    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    patterns: bool = False
    pattern_device: Literal["cpu", "same"] = "cpu"
    pattern_queries: Sequence[int] | None = None
    max_pattern_bytes: int = 2 * GIB
    stats: bool = True
    ps: Sequence[float] = (0.5, 0.9, 0.95, 0.99)
    sink_tokens: int = 4
    stability: bool = False
    impl: api.Impl = "auto"
    attention: Literal["model", "kernels"] = "model"

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "pattern_queries"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _index_tuple(name, value))
        object.__setattr__(self, "ps", _mass_tuple(self.ps))
        self.validate()

    def validate(self) -> None:
        for name in ("layers", "heads", "pattern_queries"):
            value = getattr(self, name)
            if value is not None and (not value or min(value) < 0 or len(set(value)) < len(value)):
                raise ValueError(f"{name} must be None or distinct non-negative ints, got {value}")
        for name in ("patterns", "stats", "stability"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.pattern_device not in ("cpu", "same"):
            raise ValueError(f"pattern_device must be 'cpu' or 'same', got {self.pattern_device!r}")
        check_int("max_pattern_bytes", self.max_pattern_bytes, 0)
        if not (self.patterns or self.stats):
            raise ValueError("nothing to record: set patterns=True or stats=True")
        check_ps(self.ps)
        check_int("sink_tokens", self.sink_tokens, 1, MAX_LEN)
        if self.impl not in api.IMPLS:
            raise ValueError(f"impl must be one of {api.IMPLS}, got {self.impl!r}")
        if self.attention not in ("model", "kernels"):
            raise ValueError(f"attention must be 'model' or 'kernels', got {self.attention!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceConfig:
        return cls(**data)


def _index_tuple(name: str, value: Any) -> tuple[int, ...]:
    """``value`` (a sequence of integers) as a tuple of ints; ``ValueError`` naming ``name`` for
    anything else (a scalar, a string, bools, floats)."""
    message = f"{name} must be None or a sequence of distinct non-negative ints, got {value!r}"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(message)
    items = tuple(value)
    if any(isinstance(item, bool) for item in items):
        raise ValueError(message)
    try:
        return tuple(operator.index(item) for item in items)
    except TypeError:
        raise ValueError(message) from None


def _mass_tuple(ps: Any) -> tuple[float, ...]:
    """``ps`` (a sequence of real numbers) as a tuple of floats; ``ValueError`` naming ``ps`` for
    anything else."""
    message = f"ps must be a sequence of masses in (0, 1] (or empty: no budgets), got {ps!r}"
    if isinstance(ps, (str, bytes, Mapping)) or not isinstance(ps, Iterable):
        raise ValueError(message)
    items = tuple(ps)
    if any(isinstance(p, bool) or not isinstance(p, numbers.Real) for p in items):
        raise ValueError(message)
    try:
        return tuple(float(p) for p in items)
    except OverflowError:  # an int too large for a float
        raise ValueError(message) from None


def estimate_pattern_bytes(
    batch: int, heads: int, q_len: int, kv_len: int, n_layers: int, config: TraceConfig
) -> int:
    """Bytes of float32 patterns ``[batch, heads, kept_q, kv_len]`` for ``n_layers`` layers."""
    kept = q_len if config.pattern_queries is None else len(config.pattern_queries)
    return batch * heads * kept * kv_len * 4 * n_layers


def check_pattern_bytes(estimate: int, config: TraceConfig) -> None:
    if estimate > config.max_pattern_bytes:
        raise ValueError(
            f"the requested attention patterns need about {estimate / GIB:.3f} GiB "
            f"({estimate} bytes), more than max_pattern_bytes = {config.max_pattern_bytes}; trace "
            "fewer layers / heads / pattern_queries, a smaller batch, or use stats only"
        )


# ---------------------------------------------------------------------------- the trace
@dataclass
class Trace:
    """Recorded attention of one batch.

    Attributes:
        stats: ``{layer: {statistic: tensor}}``; `STATISTICS` are ``[batch, heads, q_len]``
            float32 (NaN on padded queries), ``top_p_budget`` ``[batch, heads, q_len, len(ps)]``
            int32. ``relevant_mass`` only when relevant positions were given.
        patterns: ``{layer: [batch, heads, kept_q, kv_len]}`` float32 (opt-in).
        dense_stats: for the layers that ran a sparse method, the same statistics of the dense
            softmax of the same q and k (``stats`` then describe the sparse attention used).
        metadata: model name and class, the config as a dict, ps, heads, pattern queries,
            sequence length, input shape, ``sparse`` (the method and its layers, or None) and,
            where the caller gave them, ``tokens`` (``[batch][pos]`` strings).
    """

    stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    dense_stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.stats) | set(self.patterns))

    @property
    def ps(self) -> tuple[float, ...]:
        return tuple(self.metadata["ps"])

    @property
    def heads(self) -> list[int]:
        """Model head index of each position of the head dimension."""
        return list(self.metadata["heads"])

    @property
    def pattern_queries(self) -> list[int]:
        """Query position of each row of the stored patterns."""
        return list(self.metadata["pattern_queries"])

    def statistic(self, layer: int, name: str, *, dense: bool = False) -> torch.Tensor:
        """``[batch, heads, q_len]`` for a name of `STATISTICS` or ``"k_<p>"`` (budget of mass p,
        as floats: NaN on padded query rows, like the other statistics there);
        ``dense``: of the dense softmax where the layer ran a sparse method (`dense_stats`)."""
        stats = self.dense_stats.get(layer, self.stats[layer]) if dense else self.stats[layer]
        if name.startswith("k_"):
            index = self.ps.index(float(name[2:]))
            budgets = stats["top_p_budget"][..., index].float()
            return budgets.masked_fill(stats["entropy"].isnan(), math.nan)  # NaN: padded rows
        if name not in stats:
            raise KeyError(f"no statistic {name!r} in layer {layer}: {sorted(stats)}")
        return stats[name]

    def statistic_names(self) -> list[str]:
        if not self.stats:
            return []
        first = self.stats[self.layers[0]]
        return [name for name in STATISTICS if name in first] + [f"k_{p}" for p in self.ps]

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (metadata) atomically."""
        tensors_path, json_path = _trace_paths(path)
        tensors = {
            f"{kind}/{layer}/{name}": tensor
            for kind, layers in (("stats", self.stats), ("dense_stats", self.dense_stats))
            for layer, stats in layers.items()
            for name, tensor in stats.items()
        }
        tensors |= {f"patterns/{layer}": pattern for layer, pattern in self.patterns.items()}
        atomic_write_safetensors(tensors_path, tensors)
        atomic_write_json(json_path, self.metadata)
        return tensors_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        from safetensors.torch import load_file

        tensors_path, json_path = _trace_paths(path)
        trace = cls(metadata=json.loads(json_path.read_text(encoding="utf-8")))
        for key, tensor in load_file(tensors_path).items():
            kind, layer, *name = key.split("/")
            if kind == "patterns":
                trace.patterns[int(layer)] = tensor
            else:
                getattr(trace, kind).setdefault(int(layer), {})[name[0]] = tensor
        return trace

    def to_frame(self) -> Any:
        """Tidy ``pandas.DataFrame``: columns layer, head, batch, query, statistic, value."""
        import pandas as pd

        frames = []
        for layer in sorted(self.stats):
            for name in self.statistic_names():
                values = self.statistic(layer, name)  # [batch, heads, q_len]
                batch, heads, queries = torch.meshgrid(
                    *(torch.arange(size) for size in values.shape), indexing="ij"
                )
                frames.append(
                    pd.DataFrame(
                        {
                            "layer": layer,
                            "head": torch.tensor(self.heads)[heads.flatten()].numpy(),
                            "batch": batch.flatten().numpy(),
                            "query": queries.flatten().numpy(),
                            "statistic": name,
                            "value": values.flatten().cpu().numpy(),
                        }
                    )
                )
        columns = ["layer", "head", "batch", "query", "statistic", "value"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _trace_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


# ---------------------------------------------------------------------------- recording
class TraceRecorder:
    """Turns the layer captures of `workbench.capture.capturing` into statistics (and kept
    patterns) as they arrive; `trace()` assembles a `Trace`.

    Several forward passes inside one `tracing` block are concatenated along the batch dimension
    (they must share the sequence length). A cached call (fewer queries than keys: a step of
    generation with a key-value cache) continues the forward before it: its query rows are
    appended to that forward's, so tracing ``model.generate(...)`` gives one sequence of every
    position fed to the model, each row's statistics those of the step that computed it (patterns
    padded with zeros up to the last step's keys).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TraceConfig,
        layers: tuple[int, ...],
        heads: tuple[int, ...],
        relevant_positions: torch.Tensor | None,
        sparse: SparsePlan | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.layers = layers
        self.heads = heads
        self.relevant_positions = relevant_positions
        self.sparse = sparse
        self._stats: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._dense_stats: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._patterns: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._continues: dict[int, list[bool]] = defaultdict(list)

    def observe(self, capture: LayerCapture) -> None:
        """Record one layer's capture: statistics of the attention it used (and, where it ran a
        sparse method, of the dense softmax of the same q and k) and its pattern."""
        cached = capture.q.shape[2] < capture.k.shape[2]
        if cached and (self.relevant_positions is not None or self.config.pattern_queries):
            raise ValueError(
                "tracing generation with a key-value cache takes neither relevant_positions nor "
                "pattern_queries (the steps' queries are one position each)"
            )
        self._continues[capture.layer].append(cached)
        if self.config.stats:
            arguments = dict(heads=self.heads, relevant_positions=self.relevant_positions)
            self._stats[capture.layer].append(layer_statistics(capture, self.config, **arguments))
            if capture.restriction(self.heads) is not None:
                dense = layer_statistics(capture, self.config, dense=True, **arguments)
                self._dense_stats[capture.layer].append(dense)
        if self.config.patterns and capture.sparse:  # the weights the sparse layer used
            self.check_memory(*capture.q.shape[:3], capture.k.shape[2])
            self.record_pattern(capture.layer, capture.weights())
        elif capture.pattern is not None:
            self.record_pattern(capture.layer, capture.pattern)

    def record_pattern(self, layer: int, pattern: torch.Tensor) -> None:
        """Keep ``pattern`` ``[batch, heads, q_len, kv_len]`` (chosen heads and queries)."""
        self.check_memory(*pattern.shape)
        kept = pattern[:, list(self.heads)]
        if self.config.pattern_queries is not None:
            kept = kept[:, :, list(self.config.pattern_queries)]
        device = "cpu" if self.config.pattern_device == "cpu" else kept.device
        self._patterns[layer].append(kept.to(device=device, dtype=torch.float32).clone())

    def check_memory(self, batch: int, heads: int, q_len: int, kv_len: int) -> None:
        """Refuse patterns larger than ``max_pattern_bytes`` (before they are computed)."""
        del heads  # the chosen heads are what is stored
        if self.config.pattern_queries is not None and max(self.config.pattern_queries) >= q_len:
            raise ValueError(
                f"pattern_queries {self.config.pattern_queries} out of range for q_len {q_len}"
            )
        estimate = estimate_pattern_bytes(
            batch, len(self.heads), q_len, kv_len, len(self.layers), self.config
        )
        check_pattern_bytes(estimate, self.config)

    # -- assembly
    def trace(self) -> Trace:
        """The `Trace` of every forward pass recorded so far."""
        try:
            stats, dense_stats = (
                {
                    layer: {
                        name: torch.cat([sequence[name] for sequence in sequences])
                        for name in sequences[0]
                    }
                    for layer, sequences in (
                        (layer, fold_steps(parts, self._continues[layer], _append_rows))
                        for layer, parts in recorded.items()
                    )
                }
                for recorded in (self._stats, self._dense_stats)
            )
            patterns = {
                layer: torch.cat(fold_steps(parts, self._continues[layer], _append_pattern))
                for layer, parts in self._patterns.items()
            }
        except RuntimeError as error:
            raise ValueError(
                f"traced forward passes must share the sequence length: {error}"
            ) from None
        if not stats and not patterns:
            raise ValueError("nothing was recorded: run the model inside the tracing block")
        if stats:
            batch_size, _, q_len = next(iter(stats.values()))["entropy"].shape
        else:
            batch_size, _, q_len, _ = next(iter(patterns.values())).shape
        queries = self.config.pattern_queries
        return Trace(
            stats=stats,
            patterns=patterns,
            dense_stats=dense_stats,
            metadata={
                "model": model_name(self.model),
                "model_class": type(self.model).__name__,
                "config": self.config.to_dict(),
                "sparse": None if self.sparse is None else self.sparse.describe(),
                "ps": list(self.config.ps),
                "layers": list(self.layers),
                "heads": list(self.heads),
                "batch_size": int(batch_size),
                "seq_len": int(q_len),
                "pattern_queries": list(range(q_len) if queries is None else queries),
            },
        )


T = TypeVar("T")


def fold_steps(parts: list[T], continues: list[bool], append: Callable[[T, T], T]) -> list[T]:
    """``parts`` (one per call, in order) joined into sequences: a part whose call ``continues``
    the one before (a cached step of generation) is appended to the sequence by ``append``."""
    sequences: list[T] = []
    for part, cached in zip(parts, continues, strict=True):
        if cached and sequences:
            sequences[-1] = append(sequences[-1], part)
        else:
            sequences.append(part)
    return sequences


def _append_rows(
    sequence: dict[str, torch.Tensor], step: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Statistics ``[batch, heads, rows, ...]`` of a step appended to those of its sequence."""
    return {name: torch.cat([sequence[name], step[name]], dim=2) for name in sequence}


def _append_pattern(sequence: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A step's pattern ``[batch, heads, rows, keys]`` appended to its sequence's, whose fewer
    keys are padded with zeros (keys a row could not see)."""
    padding = step.shape[-1] - sequence.shape[-1]
    return torch.cat([torch.nn.functional.pad(sequence, (0, padding)), step], dim=2)


def layer_statistics(
    capture: LayerCapture,
    config: TraceConfig,
    *,
    heads: Sequence[int] | None = None,
    relevant_positions: torch.Tensor | None = None,
    dense: bool = False,
) -> dict[str, torch.Tensor]:
    """Row statistics of the attention a captured layer used, for ``heads`` (None: all): `STATISTICS`
    ``[batch, heads, q_len]`` float32 and ``top_p_budget`` ``[batch, heads, q_len, len(ps)]``.

    Where the layer ran a sparse method, the attention used is the softmax over its selection;
    ``dense=True`` gives the dense softmax of the same q and k instead. ``relevant_positions``
    ``[batch, q_len, R]`` (-1 padded) adds ``relevant_mass``. Padded keys are excluded: with key
    padding the examples are computed one by one on their real tokens (`padded_row_stats`)."""
    heads = list(range(capture.q.shape[1]) if heads is None else heads)
    q = capture.q[:, heads]  # [batch, heads, q_len, d_head]
    k = repeat_kv(capture.k, capture.q.shape[1])[:, heads]  # [batch, heads, kv_len, d_head]
    restrict = None if dense else capture.restriction(heads)
    relevant = relevant_positions
    if relevant is not None:
        relevant = relevant.to(q.device)
        if relevant.dim() != 3 or relevant.shape[:2] != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"relevant_positions must be [batch, q_len, R] = [{q.shape[0]}, "
                f"{q.shape[2]}, R], got {tuple(relevant.shape)}"
            )

    def compute(
        q: torch.Tensor,
        k: torch.Tensor,
        relevant: torch.Tensor | None,
        restrict: Layout | None = restrict,
    ) -> dict[str, torch.Tensor]:
        stats = api.row_stats(
            q,
            k,
            scale=capture.scale,
            causal=capture.causal,
            ps=config.ps,
            selection=sink_layout(q.shape[2], k.shape[2], config.sink_tokens, q.device),
            relevant_positions=relevant,
            restrict=restrict,
            impl=config.impl,
        )
        result = {
            "entropy": stats.entropy,
            "max_weight": stats.max_weight,
            "lse": stats.lse,
            "sink_mass": stats.selection_mass,
            "top_p_budget": stats.top_p_budget,
        }
        if stats.relevant_mass is not None:
            result["relevant_mass"] = stats.relevant_mass
        if config.stability:
            result |= trace_stability(
                q, k, causal=capture.causal, scale=capture.scale, selection=restrict
            )
        return {name: tensor.detach() for name, tensor in result.items()}

    if capture.key_padding is None:
        return compute(q, k, relevant)
    kept = None
    if restrict is not None:  # [batch, heads, q_len, kv_len]: what the sparse layer kept
        scores = None if restrict.row_threshold is None else scaled_scores(q, k, capture.scale)
        kept = restrict.to_dense(scores).expand(q.shape[0], q.shape[1], -1, -1)
    return padded_row_stats(q, k, capture.key_padding, relevant, compute, kept=kept)


def sink_layout(q_len: int, kv_len: int, sink_tokens: int, device: torch.device) -> Layout:
    """Selection of the first ``sink_tokens`` keys for every query (a broadcast token mask)."""
    keys = torch.arange(kv_len, device=device) < sink_tokens
    return Layout.from_token_mask(keys[None, None, None, :].expand(1, 1, q_len, kv_len))


def padded_row_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    key_padding: torch.Tensor,
    relevant: torch.Tensor | None,
    compute: Callable[..., dict[str, torch.Tensor]],
    *,
    kept: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Row statistics of padded inputs, example by example on the real tokens.

    ``q`` ``[batch, heads, q_len, d]``, ``k`` ``[batch, heads, kv_len, d]``, ``key_padding``
    ``[batch, kv_len]`` (True = real). Self-attention: query ``i`` is token ``kv_len - q_len + i``
    (the last tokens when a generation step's queries meet its key-value cache). Relevant
    positions are remapped to the real tokens. ``kept`` ``[batch, heads, q_len, kv_len]`` bool:
    the entries a sparse layer kept (its statistics are those of the softmax over them;
    ``compute`` gets them as ``restrict``). Padded query rows: NaN (budgets 0).
    """
    batch, heads, q_len = q.shape[:3]
    kv_len = k.shape[2]
    if q_len > kv_len:
        raise NotImplementedError("row statistics with key padding need q_len <= kv_len")
    result: dict[str, torch.Tensor] = {}
    for b in range(batch):
        real = key_padding[b].nonzero().squeeze(-1)  # [n_real] keys
        rows = real[real >= kv_len - q_len] - (kv_len - q_len)  # query rows of real tokens
        example_relevant = None
        if relevant is not None:
            new_index = torch.full((kv_len + 1,), -1, dtype=torch.long, device=q.device)
            new_index[real] = torch.arange(real.numel(), device=q.device)
            positions = relevant[b : b + 1, rows]  # [1, n_rows, R]
            example_relevant = new_index[torch.where(positions >= 0, positions, kv_len)]
        example = (q[b : b + 1, :, rows], k[b : b + 1, :, real], example_relevant)
        if kept is None:
            stats = compute(*example)
        else:
            restrict = Layout.from_token_mask(kept[b : b + 1, :, rows][..., real])
            stats = compute(*example, restrict=restrict)
        for name, values in stats.items():
            if name not in result:
                fill = 0 if name == "top_p_budget" else math.nan
                shape = (batch, heads, q_len, *values.shape[3:])
                result[name] = torch.full(shape, fill, dtype=values.dtype, device=values.device)
            result[name][b, :, rows] = values[0]
    return result


def model_name(model: nn.Module) -> str:
    """The model's name: TransformerLens's ``cfg.model_name``, else the Hugging Face name (the last
    component only when it is a local path, which says nothing to another machine)."""
    if is_transformer_lens(model):
        return str(model.cfg.model_name)
    name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    return Path(name).name if Path(name).is_absolute() or Path(name).exists() else name


# ---------------------------------------------------------------------------- entry points
@contextmanager
def tracing(
    model: nn.Module,
    config: TraceConfig | None = None,
    *,
    relevant_positions: torch.Tensor | None = None,
    sparse: SparseMethod | None = None,
    sparse_layers: Sequence[int] | None = None,
    sparse_block_size: int = 64,
) -> Iterator[TraceRecorder]:
    """Record attention during the forward passes run inside the block (routes are removed on
    exit, also on errors); ``recorder.trace()`` gives the `Trace`.

    ``sparse``: run this method on ``sparse_layers`` (None: all layers) with layouts of
    ``sparse_block_size``, as `workbench.sparse.patch.sparsify` would (every head), and record the
    attention it uses (see the module docstring; patterns of those layers are the weights over
    the selection)."""
    config = config or TraceConfig()
    if relevant_positions is not None and not config.stats:
        raise ValueError("relevant_positions needs stats=True")
    layers, heads = _layers_and_heads(model, config)
    plan = None
    if sparse is not None:
        plan = SparsePlan(
            sparse,
            layers=None if sparse_layers is None else tuple(sparse_layers),
            block_size=sparse_block_size,
            impl=config.impl,
        )
    recorder = TraceRecorder(model, config, layers, heads, relevant_positions, plan)
    with capturing(
        model,
        layers=layers,
        sparse=plan,
        attention=config.attention,
        patterns=config.patterns,
        pattern_guard=recorder.check_memory,
        on_layer=recorder.observe,
    ):
        yield recorder


def _layers_and_heads(
    model: nn.Module, config: TraceConfig
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n_layers, n_heads = model_size(model)
    layers = check_layers(config.layers, n_layers)
    heads = check_layers(config.heads, n_heads, "heads")
    return layers, heads


def trace(
    model: nn.Module,
    inputs: torch.Tensor | Mapping[str, torch.Tensor],
    config: TraceConfig | None = None,
    *,
    relevant_positions: torch.Tensor | None = None,
    sparse: SparseMethod | None = None,
    sparse_layers: Sequence[int] | None = None,
    sparse_block_size: int = 64,
    tokens: Sequence[Sequence[str]] | None = None,
    **forward_kwargs: Any,
) -> Trace:
    """Run ``model`` once on ``inputs`` (a tensor ``[batch, pos, ...]``, or a mapping such as a
    tokenizer's output, passed as keyword arguments) and return its `Trace`; with ``sparse`` the
    model runs that method (see `tracing`). The pattern memory guard runs before the forward
    pass. ``tokens``: ``[batch][pos]`` strings of the inputs (e.g. a tokenizer's
    ``convert_ids_to_tokens``), kept as ``metadata["tokens"]`` for the figures' axes."""
    config = config or TraceConfig()
    input_ids = inputs["input_ids"] if isinstance(inputs, Mapping) else inputs
    batch, length = input_ids.shape[:2]
    tokens = _checked_tokens(tokens, batch, length)
    if config.patterns:
        layers, heads = _layers_and_heads(model, config)
        estimate = estimate_pattern_bytes(batch, len(heads), length, length, len(layers), config)
        check_pattern_bytes(estimate, config)
    with (
        torch.no_grad(),
        tracing(
            model,
            config,
            relevant_positions=relevant_positions,
            sparse=sparse,
            sparse_layers=sparse_layers,
            sparse_block_size=sparse_block_size,
        ) as recorder,
    ):
        run_model(model, inputs, **forward_kwargs)
    result = recorder.trace()
    result.metadata["input_shape"] = list(input_ids.shape)
    if tokens is not None:
        result.metadata["tokens"] = tokens
    return result


def cache_trace(
    model: nn.Module,
    cache: AttentionCache,
    config: TraceConfig | None = None,
    *,
    relevant_positions: torch.Tensor | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
) -> Trace:
    """The `Trace` of an `AttentionCache` already captured (`workbench.capture.capture` of the
    cache's layers; with ``patterns=True`` for the patterns of dense layers): the statistics and
    patterns `trace` records, without running the model again, so one forward serves the trace
    and the analyses that need q, k and v. ``config.layers`` is ignored (the cache's layers are
    traced); ``relevant_positions`` ``[batch, q_len, R]`` and ``tokens`` ``[batch][pos]`` as in
    `trace`."""
    if not isinstance(cache, AttentionCache):
        raise ValueError(f"cache must be an AttentionCache, got {type(cache).__name__}")
    config = config or TraceConfig()
    heads = check_layers(config.heads, model_size(model)[1], "heads")
    recorder = TraceRecorder(model, config, tuple(sorted(cache.layers)), heads, relevant_positions)
    for capture in cache:
        recorder.observe(capture)
    result = recorder.trace()
    batch, length = result.metadata["batch_size"], result.metadata["seq_len"]
    tokens = _checked_tokens(tokens, batch, length)
    if tokens is not None:
        result.metadata["tokens"] = tokens
    return result


def _checked_tokens(
    tokens: Sequence[Sequence[str]] | None, batch: int, length: int
) -> list[list[str]] | None:
    """``tokens`` as ``[batch][length]`` strings (``ValueError`` for another shape)."""
    if tokens is None:
        return None
    tokens = [[str(token) for token in row] for row in tokens]
    if len(tokens) != batch or any(len(row) != length for row in tokens):
        shape = [len(tokens), *sorted({len(row) for row in tokens})]
        raise ValueError(f"tokens must be [batch][pos] = [{batch}][{length}], got {shape}")
    return tokens

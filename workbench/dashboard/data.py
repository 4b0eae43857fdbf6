"""What the dashboard and the report show, read through the run store (`workbench.runs`) and kept
in memory.

`Catalogue(root)` lists the runs and analyses of a `RunStore` (store folders and results folders
alike, `RunStore.contents`), indexes them (a run whose files cannot be read is a row with status
``"unreadable"`` and the error, never an exception) and loads, on demand and once, what the tabs
draw:

* an `AttentionSubject` per source: a run's model (its newest checkpoint) on the first of its
  evaluation examples, captured once (`workbench.capture`: q, k, v, z and patterns of the dense
  attention of every layer) and traced from that capture (`workbench.trace.cache_trace`); or a
  saved `workbench.trace.Trace` (a run's ``traces/``, or a file given to the catalogue);
* an `SAEView` per SAE of a run (`workbench.sae`: its metadata, and its feature report on
  held-out examples, which needs sae-lens).

Keys are paths relative to the store's root (``<experiment>/<hash>``, ``<experiment>/runs/<hash>``
in a results folder); a key is only ever looked up among the folders found, never joined to a path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from toy_tasks.base import Batch, token_labels
from workbench.capture import AttentionCache
from workbench.runs import Analysis, Run, RunStore
from workbench.trace import Trace

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, yaml.YAMLError)
"""What reading a damaged or half-written file raises (``json.JSONDecodeError`` and
`workbench.checkpoint.CheckpointError` are ``ValueError`` s)."""
UNREADABLE = "unreadable"
"""Index status of a run whose files cannot be read."""
MODEL, TRACE, FILE = "model", "trace", "file"
"""Kinds of attention sources: a run's model, a run's saved trace, a trace file."""
PS = (0.5, 0.9)
"""Top-p masses of the budgets ``k_p`` traced from a model."""
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class AttentionSubject:
    """The attention one source shows.

    Attributes:
        name: what it is, for the page.
        trace: statistics ``[batch, heads, q_len]`` and patterns ``[batch, heads, kept_q,
            kv_len]`` of every traced layer.
        tokens: ``[batch][kv_len]`` token strings, or None (positions).
        relevant: ``[batch, q_len, kv_len]`` bool ground-truth relevance, or None.
        cache: the dense capture (q, k, v, z per layer) of a model source, None for a trace:
            what a sparse method is evaluated on.
        model: the model of a model source.
        batch: its examples (inputs, targets, loss mask, relevance).
        token_task: whether the examples are tokens (accuracy is defined).
        note: how it was made, for the page.
    """

    name: str
    trace: Trace
    tokens: list[list[str]] | None = None
    relevant: torch.Tensor | None = None
    cache: AttentionCache | None = None
    model: nn.Module | None = None
    batch: Batch | None = None
    token_task: bool = False
    note: str = ""

    @property
    def examples(self) -> int:
        return int(self.trace.metadata["batch_size"])

    @property
    def live(self) -> bool:
        """Whether sparse methods can run on it (a model's capture)."""
        return self.cache is not None


@dataclass(frozen=True, eq=False)
class SAEView:
    """One SAE of a run: its metadata (``workbench.json``) and, once loaded, the `TrainedSAE`,
    its `Subject` (model, sparse plan, held-out source) and its `FeatureReport`."""

    name: str
    folder: Path
    metadata: dict[str, Any]
    trained: Any = None
    subject: Any = None
    report: Any = None

    def top_examples(self, feature: int, n: int = 8) -> list[dict[str, Any]]:
        """`workbench.sae.top_examples` of ``feature`` (``ValueError`` out of range)."""
        from workbench.sae import top_examples

        d_sae = self.report.activations.shape[1]
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
            raise ValueError(f"feature must be an int in [0, {d_sae - 1}], got {feature!r}")
        return top_examples(
            self.report,
            self.trained.sae,
            self.subject.model,
            self.subject.source,
            self.trained.layer,
            feature,
            n=n,
            sparse=self.subject.sparse,
        )


def model_subject(run: Run, examples: int) -> AttentionSubject:
    """The model of ``run`` (newest checkpoint) on the first ``examples`` of its evaluation
    examples: one dense captured forward (with patterns) and its trace. A run trained with a
    sparse method is shown with dense attention on every layer (the q, k, v of its weights: what
    a method is then judged on, as `workbench.metrics.fidelity` does)."""
    from workbench.capture import capture
    from workbench.trace import TraceConfig, cache_trace
    from workbench.train.checkpoint import load_model
    from workbench.train.data import evaluation_batch

    model, config, step = load_model(run.path)
    task = config.resolved_task()
    batch = evaluation_batch(config).head(examples)
    cache = capture(model, batch.inputs, patterns=True)
    tokens = token_labels(task, batch.inputs)
    trace = cache_trace(
        model,
        cache,
        TraceConfig(patterns=True, ps=PS, stability=True),
        relevant_positions=batch.relevant_positions,
        tokens=tokens,
    )
    sparse = " (trained with a sparse method, shown dense)" if config.sparse is not None else ""
    return AttentionSubject(
        name=f"model of {run.path.name}",
        trace=trace,
        tokens=tokens,
        relevant=batch.relevance_mask(),
        cache=cache,
        model=model,
        batch=batch,
        token_task=task.kind == "tokens",
        note=f"{task.name}, checkpoint of step {step}, the first {batch.batch_size} evaluation "
        f"examples, dense attention{sparse}",
    )


def trace_subject(path: Path, name: str) -> AttentionSubject:
    """A saved trace (``<path>.safetensors`` + ``.json``): its statistics and patterns, the
    tokens it recorded; no model (sparse methods cannot run on it)."""
    trace = Trace.load(path)
    tokens = trace.metadata.get("tokens")
    return AttentionSubject(
        name=name,
        trace=trace,
        tokens=tokens,
        note=f"saved trace of {trace.metadata.get('model', 'a model')} "
        f"({trace.metadata.get('batch_size')} examples); no model: methods cannot run on it",
    )


def sae_view(folder: Path, name: str, examples: int) -> SAEView:
    """An SAE with its feature report on ``examples`` held-out examples (imports sae-lens)."""
    from workbench.sae import feature_report, load_sae, subject

    trained = load_sae(folder)
    found = subject(trained, examples=examples)
    report = feature_report(
        trained.sae, found.model, found.source, trained.layer, sparse=found.sparse
    )
    return SAEView(name, folder, trained.metadata, trained, found, report)


class Catalogue:
    """The runs, analyses, attention sources and SAEs under ``root`` (see the module docstring).

    Args:
        root: the root of a `RunStore` (``runs/``), or a folder of results folders
            (``docs/results``); ``FileNotFoundError`` when it is no folder.
        traces: further trace files (``<path>.safetensors`` + ``.json``, as `Trace.save` writes
            them, e.g. ``workbench trace``'s), shown as attention sources.
        examples: evaluation examples a run's model is captured on.
        sae_examples: held-out examples an SAE's features are reported on.
    """

    def __init__(
        self,
        root: str | Path = "runs",
        *,
        traces: Sequence[str | Path] = (),
        examples: int = 4,
        sae_examples: int = 256,
    ) -> None:
        if not isinstance(root, (str, Path)):
            raise ValueError(f"root must be a str or a Path, got {type(root).__name__}")
        if not Path(root).is_dir():
            raise FileNotFoundError(f"root: {root} is not a folder")
        for name, value in (("examples", examples), ("sae_examples", sae_examples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(traces, (str, Path)):
            raise ValueError("traces must be a sequence of paths, not one path")
        self.store = RunStore(root)
        self.examples = examples
        self.sae_examples = sae_examples
        self.trace_files = [_trace_base(trace) for trace in traces]
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self.runs: dict[str, Run] = {}
        self.analyses: dict[str, Analysis] = {}
        self.refresh()

    @property
    def root(self) -> Path:
        return self.store.root

    def refresh(self) -> None:
        """Read the store again and forget every loaded model, trace and SAE."""
        runs, analyses = {}, {}
        for experiment in self.store.experiments():
            found_analyses, found_runs = self.store.contents(experiment)
            runs.update((self.key(run.path), run) for run in found_runs)
            analyses.update((self.key(analysis.path), analysis) for analysis in found_analyses)
        with self._lock:
            self.runs, self.analyses = runs, analyses
            self._loaded.clear()

    def key(self, path: Path) -> str:
        """The key of a folder of the store: its path relative to the root."""
        return path.relative_to(self.root).as_posix()

    def run(self, key: str) -> Run:
        """The run of ``key`` (``KeyError`` naming it when there is none)."""
        if key not in self.runs:
            raise KeyError(f"no run {key!r} under {self.root}")
        return self.runs[key]

    # -- the index
    def index(self) -> list[dict[str, Any]]:
        """One row per run: ``id`` (its key), `Run.summary` (status, task, method, seed, last
        step and evaluation), whether it has a checkpoint, its traces and SAEs; a run whose
        files cannot be read has status ``"unreadable"`` and the ``error``."""
        rows = []
        for key, run in sorted(self.runs.items()):
            row: dict[str, Any] = {"id": key, "experiment": run.experiment, "run": run.name}
            try:
                row |= run.summary()
                row["checkpoint"] = "yes" if run.has_checkpoint() else "no"
                row["traces"] = ", ".join(run.trace_names())
                row["saes"] = ", ".join(run.sae_names())
            except READ_ERRORS as error:
                row |= {"status": UNREADABLE, "error": f"{type(error).__name__}: {error}"}
            row["run"] = run.name
            rows.append(row)
        return rows

    def fits(self) -> list[tuple[str, str]]:
        """``(key, label)`` of the analyses whose results hold a power-law fit (emergence)."""
        found = []
        for key, analysis in sorted(self.analyses.items()):
            try:
                results = analysis.results() or {}
            except READ_ERRORS:
                continue
            if results.get("fit") and results.get("runs"):
                found.append((key, f"{key}: {results['fit'].get('formula', 'fit')}"))
        return found

    def analysis(self, key: str) -> Analysis:
        if key not in self.analyses:
            raise KeyError(f"no analysis {key!r} under {self.root}")
        return self.analyses[key]

    # -- attention sources
    def sources(self) -> list[tuple[str, str]]:
        """``(value, label)`` of every attention source: ``model:<run>`` for each run with a
        checkpoint, ``trace:<run>/<name>`` for each saved trace of a run, ``file:<i>`` for each
        trace file given."""
        found = []
        for key, run in sorted(self.runs.items()):
            try:
                if run.has_checkpoint():
                    found.append((f"{MODEL}:{key}", f"{key} (model)"))
                found += [
                    (f"{TRACE}:{key}/{name}", f"{key} (trace {name})") for name in run.trace_names()
                ]
            except OSError:
                continue  # listed as unreadable in the index
        found += [
            (f"{FILE}:{index}", f"{path} (trace file)")
            for index, path in enumerate(self.trace_files)
        ]
        return found

    def subject(self, source: str) -> AttentionSubject:
        """The `AttentionSubject` of a source value of `sources` (loaded once). Errors:
        ``KeyError`` (unknown source), ``FileNotFoundError`` / `CheckpointError` (no or a damaged
        checkpoint), ``ValueError`` (unreadable files)."""
        if not isinstance(source, str):
            raise ValueError(f"source must be a str, got {type(source).__name__}")
        kind, _, rest = source.partition(":")
        if kind == MODEL:
            run = self.run(rest)
            return self._once(source, lambda: model_subject(run, self.examples))
        if kind == TRACE:
            key, _, name = rest.rpartition("/")
            run = self.run(key)
            if name not in run.trace_names():
                raise KeyError(f"run {key!r} has no trace {name!r}")
            return self._once(source, lambda: trace_subject(run.trace_path(name), rest))
        if kind == FILE and rest.isdigit() and int(rest) < len(self.trace_files):
            path = self.trace_files[int(rest)]
            return self._once(source, lambda: trace_subject(path, str(path)))
        raise KeyError(f"unknown attention source {source!r}")

    # -- SAEs
    def saes(self) -> list[tuple[str, str]]:
        """``(value, label)`` of every SAE of a run: ``<run>/<name>``."""
        found = []
        for key, run in sorted(self.runs.items()):
            try:
                found += [(f"{key}/{name}", f"{key}: {name}") for name in run.sae_names()]
            except OSError:
                continue
        return found

    def sae_metadata(self, value: str) -> dict[str, Any]:
        """The ``workbench.json`` of an SAE of `saes` (no sae-lens needed)."""
        from workbench.sae.training import METADATA

        folder = self._sae_folder(value)
        return json.loads((folder / METADATA).read_text(encoding="utf-8"))

    def sae(self, value: str) -> SAEView:
        """The `SAEView` of an SAE of `saes`, its features reported (loaded once; imports
        sae-lens)."""
        folder = self._sae_folder(value)
        return self._once(f"sae:{value}", lambda: sae_view(folder, value, self.sae_examples))

    def _sae_folder(self, value: str) -> Path:
        if not isinstance(value, str):
            raise ValueError(f"sae must be a str, got {type(value).__name__}")
        key, _, name = value.rpartition("/")
        run = self.run(key)
        if name not in run.sae_names():
            raise KeyError(f"run {key!r} has no SAE {name!r}")
        return run.sae_folder(name)

    def _once(self, key: str, load: Callable[[], T]) -> T:
        """``load()`` the first time ``key`` is asked for, the same object afterwards (loads run
        one at a time: the server answers requests in threads)."""
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
            return self._loaded[key]


def _trace_base(path: str | Path) -> Path:
    """The base path of a trace file given as ``x``, ``x.json`` or ``x.safetensors``
    (``FileNotFoundError`` naming it when either file is missing)."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"traces must hold paths, got {type(path).__name__}")
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    for suffix in (".json", ".safetensors"):
        if not base.with_name(base.name + suffix).is_file():
            raise FileNotFoundError(f"traces: no trace file {base.name + suffix} in {base.parent}")
    return base

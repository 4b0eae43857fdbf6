"""The run store: the one module that knows the layout of run folders.

Every run lives in ``<root>/<experiment>/<config-hash>/`` (the hash: `config_hash` of its nested
training config), every analysis of an experiment in ``<root>/<experiment>/<experiment-hash>/``::

    <experiment>/<config-hash>/config.yaml       the run's nested config (written first)
    <experiment>/<config-hash>/metrics.jsonl     the metrics series (schema below), one record a line
    <experiment>/<config-hash>/checkpoints/      `workbench.checkpoint` (step-<n>/ folders)
    <experiment>/<config-hash>/traces/<name>.{safetensors,json}   `workbench.trace.Trace` files
    <experiment>/<config-hash>/saes/<name>/      an SAE (sae-lens's files and workbench.json)
    <experiment>/<config-hash>/results.json      written when training returns: the run is finished
    <experiment>/<config-hash>/figures/*.html    figures of the run
    <experiment>/<config-hash>/replaced-<time>/  files an explicit restart moved aside (not read)
    <experiment>/<experiment-hash>/experiment.yaml, results.json, figures/*.html   an analysis

Metrics series (``metrics.jsonl``, written by `workbench.train`): one JSON object per line with
``step``; training lines add ``loss`` (that step's batch), ``lr`` and ``grad_norm`` (before
clipping), with a curriculum ``d_active`` and ``n_points`` (of that batch), and, with a method
that has auxiliary losses (`workbench.sparse.state`), ``sparse_losses`` ``{name: value}`` (summed
over layers; ``loss`` is the task loss, the step minimised their sum); evaluation lines (step 0,
every ``eval_every`` and the last step) add ``eval_loss`` and ``eval_accuracy`` (token tasks) or
``eval_mse`` (continuous tasks), with a fixed training set
``eval_loss_train`` and ``eval_accuracy_train`` / ``eval_mse_train``, and one group per evaluation
metric, each ``{statistic: [layer][head]}`` (means over the scored positions):
``attention`` (``relevant_mass``, ``entropy``, ``k_0.9`` of the attention the model uses),
``attention_dense`` (the same of the dense softmax of the same q and k, with a sparse method) and
``stability`` (``jacobian_norm``, ``method_jacobian_norm``, ``top_k_margin``). A run stopped by
its early-stop rule ends with ``"stopped_early": true``. A step logged twice (resumed) keeps its
last record.

``RunStore(root)`` lists, finds and indexes runs; `Run` reads and writes one run folder. The
experiment runner, the CLI, the figures' data and training go through them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from workbench.io import atomic_write_json, atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
TRACES = "traces"
SAES = "saes"
FIGURES = "figures"
EXPERIMENT = "experiment.yaml"
REPLACED_PREFIX = "replaced-"
"""Prefix of the folders an explicit restart moves files into (see `workbench.checkpoint`)."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (one JSON object per line; blank lines and a
    truncated last line, as left by an interrupted run, are skipped; a missing file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
    return records


def metric_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [m], values [m])`` of ``key`` over the records that hold it (not null), sorted
    by step; a step logged twice (a resumed run) keeps its last value."""
    by_step = {
        int(record["step"]): float(record[key]) for record in records if record.get(key) is not None
    }
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[int(step)] for step in steps], dtype=np.float64)


def attention_series(
    records: Sequence[Mapping[str, Any]], name: str, group: str = "attention"
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [m], values [m, layers, heads])`` of ``record[group][name][layer][head]`` (e.g.
    ``attention`` / ``relevant_mass``, ``stability`` / ``jacobian_norm``) over the records that
    hold it, sorted by step."""
    by_step = {
        int(record["step"]): record[group][name]
        for record in records
        if name in (record.get(group) or {})
    }
    steps = sorted(by_step)
    values = np.array([by_step[step] for step in steps], dtype=np.float64)
    return np.array(steps, dtype=np.float64), values.reshape(len(steps), *values.shape[1:])


LEGACY_SPARSE_KEYS = {
    "sparse_method": "method",
    "sparse_hparams": "hparams",
    "sparse_layers": "layers",
    "sparse_block_size": "block_size",
}
LEGACY_METRIC_FLAGS = {"trace_metrics": "attention", "stability_metrics": "stability"}


def migrate_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A nested config dict of the older schema in today's: the flat ``sparse_method``,
    ``sparse_hparams``, ``sparse_layers``, ``sparse_block_size`` become ``sparse`` (None without a
    method; defaults left out, as `SparseConfig.to_dict` writes it) and the ``trace_metrics`` /
    ``stability_metrics`` flags become ``eval_metrics`` (``attention`` / ``stability``). Dicts of
    today's schema (and partial ones, such as a spec's ``quick`` overrides) come back unchanged."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a training config must be a mapping, got {data!r}")
    values = dict(data)
    legacy = {new: values.pop(old) for old, new in LEGACY_SPARSE_KEYS.items() if old in values}
    if legacy:
        if "sparse" in values:
            raise ValueError(f"a config holds both sparse and {sorted(LEGACY_SPARSE_KEYS)} keys")
        method = legacy.get("method")
        if method is None:
            if legacy.get("hparams") or legacy.get("layers") is not None:
                raise ValueError("sparse_hparams and sparse_layers need a sparse_method")
            values["sparse"] = None
        else:
            defaults = {"hparams": None, "layers": None, "block_size": 64}
            values["sparse"] = {"method": method, "hparams": legacy.get("hparams") or {}} | {
                key: legacy[key]
                for key in ("layers", "block_size")
                if key in legacy and legacy[key] != defaults[key]
            }
    flags = {new: values.pop(old) for old, new in LEGACY_METRIC_FLAGS.items() if old in values}
    if flags:
        if "eval_metrics" in values:
            raise ValueError(f"a config holds both eval_metrics and {sorted(LEGACY_METRIC_FLAGS)}")
        values["eval_metrics"] = [name for name, on in flags.items() if on]
    return values


def sparse_setting(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``sparse`` entry (``{method, hparams, ...}``) of a run's nested config in either
    schema (None: dense)."""
    return migrate_config(config).get("sparse")


@dataclass(frozen=True)
class Run:
    """One run folder (see the module docstring); nothing is read until asked for."""

    path: Path

    @property
    def name(self) -> str:
        """The folder's name: the config hash."""
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    # -- config and completion
    def config(self) -> dict[str, Any] | None:
        """The nested config of ``config.yaml`` (None before it is written)."""
        path = self.path / CONFIG
        if not path.exists():
            return None
        return yaml.safe_load(path.read_text(encoding="utf-8"))

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(dict(config), sort_keys=True))

    def is_finished(self, config: Mapping[str, Any] | None = None) -> bool:
        """Whether training finished (``results.json`` exists); with ``config``, also that the
        folder holds that config (``RuntimeError`` when it holds another one)."""
        if not (self.path / RESULTS).exists() or not (self.path / CONFIG).exists():
            return False
        if config is not None and self.config() != config:
            raise RuntimeError(
                f"{self.path / CONFIG} holds another config than the one hashing to {self.name}; "
                "remove the folder"
            )
        return True

    def status(self) -> str:
        """``"finished"``, ``"unfinished"`` (logged, not finished) or ``"empty"``."""
        if self.is_finished():
            return "finished"
        return "unfinished" if self.metrics_path.exists() else "empty"

    def summary(self) -> dict[str, Any]:
        """The run's row of `RunStore.index`: experiment, config hash, status, task, method, seed,
        last step and the last evaluation metrics (``eval_loss``, ``eval_accuracy`` /
        ``eval_mse``). Reads ``config.yaml`` and ``metrics.jsonl``: an unreadable one raises
        (``yaml.YAMLError``, ``json.JSONDecodeError``, ``OSError``; ``ValueError`` for a config
        that is no mapping)."""
        config = self.config() or {}
        if not isinstance(config, Mapping):
            raise ValueError(f"{self.path / CONFIG} holds no mapping: {config!r}")
        records = self.metrics()
        evaluated = [record for record in records if "eval_loss" in record]
        last = evaluated[-1] if evaluated else {}
        task = config.get("task")
        return {
            "experiment": self.experiment,
            "config_hash": self.name,
            "status": self.status(),
            "task": task.get("name") if isinstance(task, Mapping) else task,
            "method": (sparse_setting(config) or {}).get("method", "dense"),
            "seed": config.get("seed"),
            "last_step": records[-1]["step"] if records else None,
            **{
                key: last.get(key)
                for key in ("eval_loss", "eval_accuracy", "eval_mse")
                if key in last
            },
        }

    # -- metrics
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty when the run logged none)."""
        return read_metrics(self.metrics_path)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`metric_series` of a scalar metric (``eval_loss``, ``loss``, ...)."""
        return metric_series(self.metrics(), key)

    def attention_series(self, name: str, group: str = "attention") -> tuple[np.ndarray, ...]:
        """`attention_series` of a per-layer, per-head metric."""
        return attention_series(self.metrics(), name, group)

    # -- results
    def result(self) -> dict[str, Any]:
        """The run's ``results.json`` (``FileNotFoundError`` before it finished)."""
        return json.loads((self.path / RESULTS).read_text(encoding="utf-8"))

    def write_result(self, result: Mapping[str, Any]) -> None:
        """Write ``results.json``: marks the run finished."""
        atomic_write_json(self.path / RESULTS, dict(result))

    # -- checkpoints
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint was written (a ``checkpoints/step-<n>`` folder of
        `workbench.checkpoint`, or the older ``checkpoint.json``); `load_model` verifies it."""
        from workbench import checkpoint

        return (
            bool(checkpoint.step_folders(self.path))
            or (self.path / checkpoint.LEGACY_STATE).exists()
        )

    # -- traces and figures
    def trace_path(self, name: str) -> Path:
        """Base path of the trace ``name`` (``traces/<name>.safetensors`` and ``.json``)."""
        return self.path / TRACES / name

    def trace_names(self) -> list[str]:
        return sorted(path.stem for path in (self.path / TRACES).glob("*.json"))

    def load_trace(self, name: str) -> Any:
        """The `workbench.trace.Trace` saved under ``name``."""
        from workbench.trace import Trace

        return Trace.load(self.trace_path(name))

    def sae_folder(self, name: str) -> Path:
        """Folder of the SAE ``name`` (`workbench.sae`)."""
        return self.path / SAES / name

    def sae_names(self) -> list[str]:
        return sorted(path.parent.name for path in (self.path / SAES).glob("*/workbench.json"))

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES


def runs_in(folder: str | Path) -> list[Run]:
    """The run folders directly inside ``folder`` (those with a ``config.yaml`` or a
    ``metrics.jsonl``), sorted by name."""
    folder = Path(folder)
    found = {path.parent for name in (CONFIG, METRICS) for path in folder.glob(f"*/{name}")}
    return [Run(path) for path in sorted(found)]


def is_run(folder: str | Path) -> bool:
    """Whether ``folder`` is a run folder (holds a ``config.yaml`` or a ``metrics.jsonl``)."""
    return any((Path(folder) / name).exists() for name in (CONFIG, METRICS))


def resolve_run(run: str | Path, root: str | Path) -> Run:
    """The run ``run`` names: a run folder, or a config-hash prefix of one run under the store
    ``root``; ``ValueError`` saying why not."""
    if Path(run).is_dir():
        if not is_run(run):
            raise ValueError(f"{run} is not a run folder (no {CONFIG} or {METRICS})")
        return Run(Path(run))
    try:
        return RunStore(root).find(str(run))
    except (KeyError, LookupError) as error:
        raise ValueError(error.args[0] if error.args else str(error)) from None


@dataclass(frozen=True)
class Analysis:
    """An analysis folder of an experiment: ``experiment.yaml``, ``results.json``, ``figures/``."""

    path: Path

    def spec(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / EXPERIMENT).read_text(encoding="utf-8"))

    def results(self) -> dict[str, Any] | None:
        path = self.path / RESULTS
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def run_names(self) -> list[str]:
        """Config hashes of the runs the analysis used (its ``results.json``)."""
        return [run["config_hash"] for run in (self.results() or {}).get("runs", [])]

    def write(self, spec: Mapping[str, Any], results: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / EXPERIMENT, yaml.safe_dump(dict(spec), sort_keys=False))
        atomic_write_json(self.path / RESULTS, dict(results))

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES


def analyses_in(folder: str | Path) -> list[Analysis]:
    """The analysis folders directly inside ``folder`` (those with an ``experiment.yaml``)."""
    return [Analysis(path.parent) for path in sorted(Path(folder).glob(f"*/{EXPERIMENT}"))]


def experiment_contents(folder: str | Path) -> tuple[list[Analysis], list[Run]]:
    """``(analyses, runs)`` of an experiment folder: ``<root>/<experiment>/`` of a store (run and
    analysis folders side by side), or a results folder (an analysis, ``experiment.yaml`` in the
    folder itself, with its runs in ``runs/``, as ``docs/results/*`` are)."""
    folder = Path(folder)
    analyses = [Analysis(folder)] if (folder / EXPERIMENT).exists() else []
    runs_folder = folder / "runs" if (folder / "runs").is_dir() else folder
    return analyses + analyses_in(folder), runs_in(runs_folder)


class RunStore:
    """The run folders under ``root`` (``runs/`` by default; see the module docstring)."""

    def __init__(self, root: str | Path = "runs") -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run(self, experiment: str, config_hash: str) -> Run:
        """The run folder of a config (it may not exist yet)."""
        return Run(self.root / experiment / config_hash)

    def analysis(self, experiment: str, experiment_hash: str) -> Analysis:
        return Analysis(self.root / experiment / experiment_hash)

    def experiments(self) -> list[str]:
        """Names of the experiment folders."""
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir())

    def runs(self, experiment: str | None = None) -> list[Run]:
        """Every run folder (one with a ``config.yaml`` or a ``metrics.jsonl``) of ``experiment``
        (None: of all), sorted."""
        names = self.experiments() if experiment is None else [experiment]
        return [run for name in names for run in runs_in(self.root / name)]

    def analyses(self, experiment: str) -> list[Analysis]:
        """The analysis folders of ``experiment``."""
        return analyses_in(self.root / experiment)

    def contents(self, experiment: str) -> tuple[list[Analysis], list[Run]]:
        """``(analyses, runs)`` of the folder of ``experiment`` (`experiment_contents`: a store's
        experiment folder, or a results folder with its runs in ``runs/``)."""
        return experiment_contents(self.root / experiment)

    def find(self, prefix: str) -> Run:
        """The run whose config hash starts with ``prefix`` (``KeyError`` when none or several)."""
        matches = [run for run in self.runs() if run.name.startswith(prefix)]
        if len(matches) != 1:
            found = ", ".join(f"{run.experiment}/{run.name}" for run in matches) or "none"
            raise KeyError(f"{len(matches)} runs under {self.root} start with {prefix!r}: {found}")
        return matches[0]

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs())

    def index(self) -> list[dict[str, Any]]:
        """One row per run (`Run.summary`): experiment, config hash, status, task, method, seed,
        last step and the last evaluation metrics (``eval_loss``, ``eval_accuracy`` /
        ``eval_mse``)."""
        return [run.summary() for run in self.runs()]

"""Run an experiment: train every config of its sweep (cached by config hash), then analyse.

The run folders and analysis folders are those of the run store (`workbench.runs`)::

    <name>/<config-hash>/config.yaml       one folder per run (written first)
    <name>/<config-hash>/metrics.jsonl     written by the training function (and checkpoints)
    <name>/<config-hash>/results.json      written here when training returns: marks it complete
    <name>/<experiment-hash>/experiment.yaml, results.json, figures/*.html   the analysis

A run whose ``results.json`` exists and whose ``config.yaml`` equals its config is reused, not
retrained; any other run is (re)started with ``resume=True``, so a run interrupted after some
checkpoints continues from the last one (``resume="previous"`` or False choose what a run with a
damaged checkpoint does: see `workbench.train.train`).

Where the runs train is the executor's business (`workbench.experiments.executors`): ``process``
(the default) trains them one after the other here, or with ``workers > 1`` spread over that
many processes (small models leave a GPU, or a many-core CPU, mostly idle in one process);
``ray`` makes each a Ray task on a local or existing cluster. A run that fails (a damaged
checkpoint, a diverged loss) does not stop the others; `RunsFailed` names every failed run once
all have ended.

SIGTERM (a scheduler's time limit), or Ctrl-C in a sweep of several workers or on Ray, stops
training cleanly: every run in training writes a checkpoint and `workbench.termination.Terminated`
is raised (runs not yet started are not started); running the experiment again continues from
those checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.experiments.base import Headline, RunRecord, get_analysis
from workbench.experiments.executors import EXECUTORS, RunsFailed, TrainFn
from workbench.experiments.executors.process import default_threads, train_in_turn, train_pending
from workbench.experiments.executors.ray import (
    EXTRA,
    address_endpoint,
    check_resources,
    train_on_ray,
)
from workbench.experiments.spec import ExperimentSpec, config_hash, load_spec
from workbench.io import write_figure
from workbench.runs import Run, RunStore

logger = logging.getLogger(__name__)

__all__ = ["ExperimentResult", "RunsFailed", "TrainFn", "run_experiment", "train_with_workbench"]


def train_with_workbench(
    config: dict[str, Any], out_dir: Path, *, resume: bool | str, progress: bool
) -> Any:
    """The default `TrainFn`: ``workbench.train.train(TrainConfig.from_dict(config), out_dir,
    resume=resume, progress=progress)`` (imported on first use: torch and TransformerLens load
    only when something trains); returns the final metrics record and the resumed-from step."""
    from workbench.train import TrainConfig, train

    result = train(TrainConfig.from_dict(config), out_dir, resume=resume, progress=progress)
    return {"metrics": result.metrics, "resumed_from": result.resumed_from}


@dataclass(frozen=True)
class ExperimentResult:
    """Outcome of `run_experiment`.

    Attributes:
        spec: the spec that ran (``--quick`` already applied).
        runs: one record per config, in `ExperimentSpec.configs` order.
        directory: ``runs/<name>/<experiment-hash>/``.
        results: the analysis results (also in ``directory / "results.json"``).
        figures: paths of the written ``figures/*.html``.
        headline: the analysis's `Headline` (None: it has none).
    """

    spec: ExperimentSpec
    runs: list[RunRecord]
    directory: Path
    results: dict[str, Any]
    figures: list[Path]
    headline: Headline | None = None

    @property
    def results_path(self) -> Path:
        return self.directory / "results.json"

    @property
    def n_trained(self) -> int:
        """Runs trained (not reused from the cache) by this call."""
        return sum(not run.cached for run in self.runs)


def logged_run(config: dict[str, Any], run: Run) -> RunRecord | None:
    """The run of ``config`` as it stands, finished or not (None: nothing logged there)."""
    if run.is_finished(config):
        return RunRecord(config, run, cached=True)
    if not run.metrics():
        return None
    logger.info("analysing the unfinished run %s as logged so far", run.path)
    return RunRecord(config, run, cached=True, finished=False)


def check_executor(
    executor: Any,
    workers: Any,
    address: Any,
    cpus_per_run: Any,
    gpus_per_run: Any,
) -> None:
    """``ValueError`` / ``TypeError`` naming the parameter for an unknown executor or an option
    of the other executor; ``ModuleNotFoundError`` naming the extra for ``ray`` without Ray."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "process":
        for name, value in (
            ("address", address),
            ("cpus_per_run", cpus_per_run),
            ("gpus_per_run", gpus_per_run),
        ):
            if value is not None:
                raise ValueError(f"{name} is an option of executor='ray', got {value!r}")
        return
    if workers != 1:
        raise ValueError(
            f"workers is an option of executor='process', got {workers!r}; with executor='ray' "
            "the cluster's resources and cpus_per_run / gpus_per_run set how many runs train "
            "at once"
        )
    if address is not None and (not isinstance(address, str) or not address):
        raise TypeError(f"address must be a non-empty string or None, got {address!r}")
    if address is not None:
        address_endpoint(address)
    check_resources(1 if cpus_per_run is None else cpus_per_run, gpus_per_run or 0)
    if importlib.util.find_spec("ray") is None:
        raise ModuleNotFoundError(f"executor='ray' needs {EXTRA}")


def run_experiment(
    experiment: str | ExperimentSpec,
    *,
    quick: bool = False,
    where: Mapping[str, Sequence[Any]] | None = None,
    runs_dir: str | Path = "runs",
    train_fn: TrainFn | None = None,
    progress: bool = True,
    workers: int = 1,
    train: bool = True,
    resume: bool | str = True,
    threads: int | None = None,
    executor: str = "process",
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
) -> ExperimentResult:
    """Train every run of ``experiment`` (a name in ``experiments/``, a YAML path or a spec),
    reusing finished runs, then write its analysis.

    Args:
        experiment: spec name, YAML path or `ExperimentSpec`.
        quick: apply the spec's ``quick`` overrides (small CPU variant).
        where: train and analyse a slice of the sweep (after ``quick``):
            `ExperimentSpec.restricted`, e.g. ``{"task.seq_len": [64, 32]}``; the slice's runs
            are the whole spec's, and its analysis has a folder of its own.
        runs_dir: root of the run folders.
        train_fn: the training function (default `train_with_workbench`).
        progress: progress bars: ``train_fn``'s in one process, else one bar over the runs.
        workers: (``executor="process"``) train this many runs at once in separate processes
            (``train_fn`` must then be picklable: a module-level function).
        train: False analyses what is already there without training: the finished runs and
            the logged part of unfinished ones (``RunRecord.finished`` False); runs that logged
            nothing are left out and named in the results' ``missing``.
        resume: passed to ``train_fn`` for the runs it trains: True (continue from the newest
            checkpoint; a damaged one fails the run), ``"previous"`` (from the newest checkpoint
            that verifies) or False (afresh, the old files moved aside); see
            `workbench.train.train`.
        threads: torch's CPU threads per training process (None: `default_threads` with the
            process executor, ``cpus_per_run`` rounded down (at least 1) with Ray).
        executor: ``"process"`` (this process, or ``workers`` local processes) or ``"ray"``
            (each run a Ray task; needs the extra ``ray``): `workbench.experiments.executors`.
        address: (``executor="ray"``) the Ray cluster's address (``"auto"``: the one ``ray
            start`` runs on this machine, ``"ray://host:10001"``: through Ray Client); None:
            ``RAY_ADDRESS`` when set, else a local cluster started for the sweep and shut down
            after it. The run folders must be on a filesystem every node sees at the same path.
        cpus_per_run: (``executor="ray"``) CPUs a run asks Ray for (default 1; > 0, fractions
            only below 1).
        gpus_per_run: (``executor="ray"``) GPUs a run asks for (default 0; 0.25: four runs share
            a GPU).

    Returns:
        The `ExperimentResult`; the analysis is in ``runs_dir/<name>/<experiment-hash>/``.
    """
    spec = experiment if isinstance(experiment, ExperimentSpec) else load_spec(experiment)
    if quick:
        spec = spec.quick_variant()
    if where:
        spec = spec.restricted(where)
    check_executor(executor, workers, address, cpus_per_run, gpus_per_run)
    if executor == "ray":
        cpus_per_run = 1 if cpus_per_run is None else cpus_per_run
        gpus_per_run = gpus_per_run or 0
    if threads is None:
        threads = default_threads(workers) if executor == "process" else max(1, int(cpus_per_run))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    train_fn = train_fn or train_with_workbench
    store = RunStore(runs_dir)
    configs = [(config, store.run(spec.name, config_hash(config))) for config in spec.configs()]
    missing: list[str] = []
    if not train:
        runs = [logged_run(config, run) for config, run in configs]
        missing = [run.name for record, (_, run) in zip(runs, configs, strict=True) if not record]
        runs = [record for record in runs if record is not None]
    elif executor == "process" and workers == 1:
        runs = train_in_turn(configs, train_fn, progress=progress, resume=resume, threads=threads)
    else:
        pending = [(config, run) for config, run in configs if not run.is_finished(config)]
        if executor == "ray" and pending:
            train_on_ray(
                pending,
                train_fn,
                address=address,
                cpus_per_run=cpus_per_run,
                gpus_per_run=gpus_per_run,
                progress=progress,
                resume=resume,
                threads=threads,
            )
        elif pending:
            train_pending(
                pending,
                train_fn,
                workers=workers,
                progress=progress,
                resume=resume,
                threads=threads,
            )
        trained = {run.path for _, run in pending}
        runs = [RunRecord(config, run, cached=run.path not in trained) for config, run in configs]
    analysis_folder = store.analysis(spec.name, spec.experiment_hash())
    output = get_analysis(spec.name)(spec, runs)
    results = {
        "experiment": spec.name,
        "experiment_hash": spec.experiment_hash(),
        "quick": quick,
        "runs": [
            {"config_hash": run.config_hash, "config": run.config, "finished": run.finished}
            for run in runs
        ],
        **({"missing": missing} if missing else {}),
        **output.results,
        **({"headline": output.headline.to_dict()} if output.headline else {}),
    }
    analysis_folder.write(spec.to_dict(), results)
    figures = [
        write_figure(figure, analysis_folder.figures_dir / f"{name}.html")
        for name, figure in output.figures.items()
    ]
    directory = analysis_folder.path
    return ExperimentResult(spec, runs, directory, results, figures, output.headline)

"""Run an experiment: train every config of its sweep (cached by config hash), then analyse.

The run folders and analysis folders are those of the run store (`workbench.runs`)::

    <name>/<config-hash>/config.yaml       one folder per run (written first)
    <name>/<config-hash>/metrics.jsonl     written by the training function (and checkpoints)
    <name>/<config-hash>/results.json      written here when training returns: marks it complete
    <name>/<experiment-hash>/experiment.yaml, results.json, figures/*.html   the analysis

A run whose ``results.json`` exists and whose ``config.yaml`` equals its config is reused, not
retrained; any other run is (re)started with ``resume=True``, so a run interrupted after some
checkpoints continues from the last one (``resume="previous"`` or False choose what a run with a
damaged checkpoint does: see `workbench.train.train`). With ``workers > 1`` the runs to train are
spread over that many processes (small models leave a GPU, or a many-core CPU, mostly idle in one
process). A run that fails (a damaged checkpoint, a diverged loss) does not stop the others;
`RunsFailed` names every failed run once all have ended.

SIGTERM (a scheduler's time limit) stops training cleanly: every run in training writes a
checkpoint and `workbench.termination.Terminated` is raised (runs not yet started are cancelled);
running the experiment again continues from those checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.experiments.base import Headline, RunRecord, get_analysis
from workbench.experiments.spec import ExperimentSpec, config_hash, load_spec
from workbench.io import write_figure
from workbench.runs import Run, RunStore
from workbench.termination import Terminated, forward_termination, termination_requests

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the parent of worker processes looks for a SIGTERM while it waits for them."""


class TrainFn(Protocol):
    """``train_fn(config, out_dir, resume=..., progress=...)``: trains one run described by the
    nested ``config`` dict, writing ``metrics.jsonl`` (and checkpoints) into ``out_dir``; returns
    a JSON-ready summary dict (stored in the run's ``results.json``) or None. ``resume``: True,
    ``"previous"`` or False, as `workbench.train.train` takes it."""

    def __call__(
        self, config: dict[str, Any], out_dir: Path, *, resume: bool | str, progress: bool
    ) -> Any: ...


class RunsFailed(RuntimeError):
    """Some of the ``total`` runs of an experiment failed (the others were trained);
    ``failures`` pairs each failed run's folder with its error, the first of which is chained."""

    def __init__(self, failures: list[tuple[Path, BaseException]], total: int) -> None:
        listed = "; ".join(f"{directory.name}: {error!r}" for directory, error in failures)
        super().__init__(f"{len(failures)} of {total} runs failed ({listed})")
        self.failures, self.total = failures, total


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


def run_config(
    config: dict[str, Any],
    run: Run,
    train_fn: TrainFn,
    *,
    progress: bool,
    resume: bool | str = True,
) -> RunRecord:
    """Train one config into its ``run`` folder (passing ``resume`` on) unless it is finished."""
    if run.is_finished(config):
        logger.info("reusing %s (cached)", run.path)
        return RunRecord(config, run, cached=True)
    logger.info("training %s", run.path)
    run.write_config(config)
    start = time.perf_counter()
    result = train_fn(config, run.path, resume=resume, progress=progress)
    seconds = time.perf_counter() - start  # this call's training (a resumed run: the rest of it)
    run.write_result({"config_hash": run.name, "train": result, "seconds": seconds})
    return RunRecord(config, run, cached=False)


def logged_run(config: dict[str, Any], run: Run) -> RunRecord | None:
    """The run of ``config`` as it stands, finished or not (None: nothing logged there)."""
    if run.is_finished(config):
        return RunRecord(config, run, cached=True)
    if not run.metrics():
        return None
    logger.info("analysing the unfinished run %s as logged so far", run.path)
    return RunRecord(config, run, cached=True, finished=False)


def default_threads(workers: int) -> int:
    """CPU threads per training process: a quarter of the cores per worker, at least one. Toy
    models gain little from more threads, and a process of many threads slows down badly as soon
    as anything else runs (the quick emergence sweep on 2 cores: 24 s with 1 thread, 75 s with 2
    while another process ran)."""
    return max(1, (os.cpu_count() or 1) // (4 * workers))


def _limit_threads(threads: int) -> None:
    """Worker initialiser: the number of CPU threads of torch in each worker process."""
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's number of CPU threads set to ``threads`` inside the block (restored after)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_in_turn(
    pending: list[tuple[dict[str, Any], Path]],
    train_fn: TrainFn,
    *,
    progress: bool,
    resume: bool | str = True,
) -> list[RunRecord]:
    """`run_config` for each ``(config, run)`` pair, one after the other in this process. A
    failed run does not stop the others; once all have ended, `RunsFailed` names every failed run
    and chains the first error (`Terminated` and ``KeyboardInterrupt`` stop at once)."""
    runs: list[RunRecord] = []
    failures: list[tuple[Path, BaseException]] = []
    for config, run in pending:
        try:
            runs.append(run_config(config, run, train_fn, progress=progress, resume=resume))
        except Terminated:
            raise
        except Exception as error:
            logger.error("run %s failed: %s", run.path, error)
            failures.append((run.path, error))
    if failures:
        raise RunsFailed(failures, len(pending)) from failures[0][1]
    return runs


def train_pending(
    pending: list[tuple[dict[str, Any], Path]],
    train_fn: TrainFn,
    *,
    workers: int,
    progress: bool,
    resume: bool | str = True,
    threads: int = 1,
) -> None:
    """Train ``(config, run)`` pairs in ``workers`` spawned processes (one run each at a
    time, ``threads`` CPU threads each; a run is handed out only when a worker is free), with
    one progress bar over the runs. A failed run does not stop the others (a long sweep keeps
    going); once all have ended, `RunsFailed` names every failed run and chains the first
    error. SIGTERM is forwarded to the workers (their training checkpoints and stops), no further
    run starts, and `Terminated` is raised once the workers have stopped."""
    from tqdm.auto import tqdm

    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    waiting = list(reversed(pending))
    running: dict[Future[RunRecord], Path] = {}
    failures: list[tuple[Path, BaseException]] = []
    with (
        termination_requests() as terminated,  # outermost: still active while the pool shuts down
        ProcessPoolExecutor(workers, context, _limit_threads, (threads,)) as pool,
        tqdm(total=len(pending), disable=not progress) as bar,
    ):
        while running or (waiting and not terminated()):
            while waiting and len(running) < workers and not terminated():
                config, run = waiting.pop()
                future = pool.submit(
                    run_config, config, run, train_fn, progress=False, resume=resume
                )
                running[future] = run.path
            done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            if terminated() and not done:
                forward_termination()  # the group may not have had it (``kill <parent pid>``)
            for future in done:
                directory = running.pop(future)
                bar.update(1)
                if future.exception() is not None and not terminated():
                    logger.error("run %s failed: %s", directory, future.exception())
                    failures.append((directory, future.exception()))
    if terminated():
        raise Terminated(
            f"SIGTERM: the runs in training checkpointed and stopped, {len(waiting)} not started"
        )
    if failures:
        raise RunsFailed(failures, len(pending)) from failures[0][1]


def run_experiment(
    experiment: str | ExperimentSpec,
    *,
    quick: bool = False,
    runs_dir: str | Path = "runs",
    train_fn: TrainFn | None = None,
    progress: bool = True,
    workers: int = 1,
    train: bool = True,
    resume: bool | str = True,
    threads: int | None = None,
) -> ExperimentResult:
    """Train every run of ``experiment`` (a name in ``experiments/``, a YAML path or a spec),
    reusing finished runs, then write its analysis.

    Args:
        experiment: spec name, YAML path or `ExperimentSpec`.
        quick: apply the spec's ``quick`` overrides (small CPU variant).
        runs_dir: root of the run folders.
        train_fn: the training function (default `train_with_workbench`).
        progress: passed to ``train_fn`` (progress bars; with ``workers > 1`` one bar over runs).
        workers: train this many runs at once in separate processes (``train_fn`` must then be
            picklable: a module-level function).
        train: False analyses what is already there without training: the finished runs and
            the logged part of unfinished ones (``RunRecord.finished`` False); runs that logged
            nothing are left out and named in the results' ``missing``.
        resume: passed to ``train_fn`` for the runs it trains: True (continue from the newest
            checkpoint; a damaged one fails the run), ``"previous"`` (from the newest checkpoint
            that verifies) or False (afresh, the old files moved aside); see
            `workbench.train.train`.
        threads: torch's CPU threads per training process (None: `default_threads`).

    Returns:
        The `ExperimentResult`; the analysis is in ``runs_dir/<name>/<experiment-hash>/``.
    """
    spec = experiment if isinstance(experiment, ExperimentSpec) else load_spec(experiment)
    if quick:
        spec = spec.quick_variant()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    threads = default_threads(workers) if threads is None else threads
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
    elif workers > 1:
        pending = [(config, run) for config, run in configs if not run.is_finished(config)]
        train_pending(
            pending, train_fn, workers=workers, progress=progress, resume=resume, threads=threads
        )
        trained = {run.path for _, run in pending}
        runs = [RunRecord(config, run, cached=run.path not in trained) for config, run in configs]
    else:
        with torch_threads(threads):
            runs = train_in_turn(configs, train_fn, progress=progress, resume=resume)
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

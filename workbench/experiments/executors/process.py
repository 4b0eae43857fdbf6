"""The default executor: runs one after the other in this process (``workers=1``), or spread over
``workers`` spawned local processes. Needs nothing beyond the base install."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from workbench.experiments.base import RunRecord
from workbench.experiments.executors.base import (
    RunsFailed,
    TrainFn,
    run_config,
    run_in_worker,
    run_sweep,
    torch_threads,
)
from workbench.runs import Run
from workbench.termination import Terminated, forward_termination

logger = logging.getLogger(__name__)


def default_threads(workers: int) -> int:
    """CPU threads per training process: a quarter of the cores per worker, at least one. Toy
    models gain little from more threads, and a process of many threads slows down badly as soon
    as anything else runs (the quick emergence sweep on 2 cores: 24 s with 1 thread, 75 s with 2
    while another process ran)."""
    return max(1, (os.cpu_count() or 1) // (4 * workers))


def train_in_turn(
    pending: list[tuple[dict[str, Any], Run]],
    train_fn: TrainFn,
    *,
    progress: bool,
    resume: bool | str = True,
    threads: int = 1,
) -> list[RunRecord]:
    """`run_config` for each ``(config, run)`` pair, one after the other in this process (with
    ``threads`` torch threads). A failed run does not stop the others; once all have ended,
    `RunsFailed` names every failed run and chains the first error (`Terminated` and
    ``KeyboardInterrupt`` stop at once)."""
    runs: list[RunRecord] = []
    failures = []
    with torch_threads(threads):
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


def _ignore_interrupts() -> None:
    """Pool initialiser: Ctrl-C reaches every process of the terminal's group; an idle worker
    ignores it (the parent stops the sweep), a worker in a run treats it as a stop request
    (`run_in_worker`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class PoolBackend:
    """The `Backend` of ``workers`` spawned processes (one run each at a time)."""

    pool: ProcessPoolExecutor
    workers: int
    train_fn: TrainFn
    resume: bool | str
    threads: int

    def slots(self) -> int:
        return self.workers

    def submit(self, config: dict[str, Any], run: Run) -> Future[None]:
        return self.pool.submit(
            run_in_worker, config, run, self.train_fn, resume=self.resume, threads=self.threads
        )

    def wait(self, handles: list[Future[None]], timeout: float) -> list[Future[None]]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def error(self, handle: Future[None]) -> BaseException | None:
        return handle.exception()

    def stop(self, handles: list[Future[None]]) -> None:
        forward_termination()  # the group may not have had it (``kill <parent pid>``)


def train_pending(
    pending: list[tuple[dict[str, Any], Run]],
    train_fn: TrainFn,
    *,
    workers: int,
    progress: bool,
    resume: bool | str = True,
    threads: int = 1,
) -> None:
    """Train ``(config, run)`` pairs in ``workers`` spawned processes (``threads`` CPU threads
    each; ``train_fn`` must be picklable) through `run_sweep`: one progress bar, failed runs
    recorded, SIGTERM or Ctrl-C checkpoint the runs in training and raise `Terminated`."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(workers, context, _ignore_interrupts) as pool:
        run_sweep(pending, PoolBackend(pool, workers, train_fn, resume, threads), progress=progress)

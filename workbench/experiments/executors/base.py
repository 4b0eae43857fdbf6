"""What every executor shares: training one run (`run_config`), the worker side of a run
(`run_in_worker`: cancellation stops training at a safe point), and the sweep loop
(`run_sweep`) that hands runs to a `Backend`, shows one progress bar and turns SIGTERM or Ctrl-C
into a clean stop.

An executor module (`workbench.experiments.executors.process`, `...ray`) supplies a `Backend`:
how many runs may be in flight, how to submit one, wait for some, read a finished one's error and
ask the running ones to checkpoint and stop. The loop is the same for all: a run is handed out
only while there is room (so a stop request leaves the rest unstarted), a failed run is recorded
with its error and the others go on, and at the end `RunsFailed` names every failed run or
`Terminated` says the sweep stopped on request.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from workbench.experiments.base import RunRecord
from workbench.runs import Run
from workbench.termination import Terminated, termination_requests

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the sweep loop looks for a stop request while it waits for runs."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What stops a sweep cleanly: SIGTERM (a scheduler's time limit) and SIGINT (Ctrl-C; Ray's
cancellation of a running task raises it in the task's process)."""


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


def run_in_worker(
    config: dict[str, Any], run: Run, train_fn: TrainFn, *, resume: bool | str, threads: int
) -> None:
    """`run_config` in a worker process (a pool process or a Ray task), with ``threads`` torch
    threads. SIGTERM and SIGINT are stop requests while it runs: a run in training writes a
    checkpoint and stops (`workbench.train.train` raises `TrainingInterrupted`), so a cancelled
    task loses nothing and the same sweep continues it later."""
    with termination_requests(STOP_SIGNALS), torch_threads(threads):
        run_config(config, run, train_fn, progress=False, resume=resume)


Handle = TypeVar("Handle")


class Backend(Protocol, Generic[Handle]):
    """Where the runs of a sweep execute (one per executor); ``Handle`` names a submitted run."""

    def slots(self) -> int:
        """How many runs may be in flight now (at least 1)."""
        ...

    def submit(self, config: dict[str, Any], run: Run) -> Handle:
        """Start training ``config`` into ``run`` (`run_in_worker`)."""
        ...

    def wait(self, handles: list[Handle], timeout: float) -> list[Handle]:
        """The handles of runs that have ended, waiting up to ``timeout`` s for a first one."""
        ...

    def error(self, handle: Handle) -> BaseException | None:
        """The error an ended run raised (None: it finished)."""
        ...

    def stop(self, handles: list[Handle]) -> None:
        """Ask the runs in flight to checkpoint and stop (they end as usual after that)."""
        ...


def run_sweep(
    pending: list[tuple[dict[str, Any], Run]], backend: Backend[Any], *, progress: bool
) -> None:
    """Train the ``(config, run)`` pairs on ``backend``, handing a run out only while there is a
    free slot, with one progress bar over the sweep (runs done, running and failed; a line for
    each failure). A failed run does not stop the others; once all have ended, `RunsFailed`
    names every failed run and chains the first error. SIGTERM or Ctrl-C: no further run
    starts, the runs in flight are asked to checkpoint and stop, and `Terminated` is raised once
    they have ended."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    waiting = list(reversed(pending))
    running: dict[Any, Path] = {}
    failures: list[tuple[Path, BaseException]] = []
    stopped = False
    with (
        termination_requests(STOP_SIGNALS) as terminated,
        tqdm(total=len(pending), disable=not progress, desc="runs", unit="run") as bar,
        logging_redirect_tqdm(),
    ):
        while running or (waiting and not terminated()):
            free = backend.slots() - len(running)
            while waiting and free > 0 and not terminated():
                config, run = waiting.pop()
                running[backend.submit(config, run)] = run.path
                free -= 1
            _show(bar, len(running), len(failures))
            done = backend.wait(list(running), POLL_SECONDS)
            if terminated() and not stopped:
                backend.stop(list(running))
                stopped = True
            for handle in done:
                directory = running.pop(handle)
                error = backend.error(handle)
                if error is not None and not terminated():
                    logger.error("run %s failed: %s: %s", directory, type(error).__name__, error)
                    failures.append((directory, error))
                bar.update(1)
            _show(bar, len(running), len(failures))
    if terminated():
        raise Terminated(
            f"the runs in training checkpointed and stopped, {len(waiting)} not started"
        )
    if failures:
        raise RunsFailed(failures, len(pending)) from failures[0][1]


def _show(bar: Any, running: int, failed: int) -> None:
    """The bar's ``running N, failed M`` (redrawn only when it changes)."""
    text = f"running {running}, failed {failed}"
    if getattr(bar, "postfix", None) != text:
        bar.set_postfix_str(text)

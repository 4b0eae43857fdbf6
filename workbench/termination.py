"""SIGTERM as a request to stop cleanly.

Schedulers stop a job at its time limit with SIGTERM (SLURM, Kubernetes, GNU ``timeout``; most
send it to the whole process group), then kill it a little later. By default SIGTERM kills a
Python process at once; inside `termination_requests` it is turned into a request that the code
honours at a safe point instead:

    with termination_requests() as requested:
        while ...:
            step()
            if requested():
                save()
                forward_termination()   # a parent of worker processes passes it on
                raise Terminated(...)

Signal handlers can only be set from the main thread; elsewhere the manager changes nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class Terminated(Exception):
    """A SIGTERM request honoured: the work stopped at a safe point."""


@contextlib.contextmanager
def termination_requests() -> Iterator[Callable[[], bool]]:
    """Within the block SIGTERM sets a flag instead of ending the process (the previous handler
    is restored after); yields a function that tells whether a SIGTERM arrived since the block
    began (always False outside the main thread, where handlers cannot be set)."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return

    def record(signum: int, frame: FrameType | None) -> None:
        received.set()

    previous = signal.signal(signal.SIGTERM, record)
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def forward_termination() -> None:
    """Send SIGTERM to this process's live child processes (worker processes that honour it)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]

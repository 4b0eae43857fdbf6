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
from collections.abc import Callable, Iterator, Sequence
from types import FrameType


class Terminated(Exception):
    """A SIGTERM request honoured: the work stopped at a safe point."""


_ENCLOSING: list[threading.Event] = []
"""The requests of the `termination_requests` blocks open in the main thread, innermost last: a
signal that one block records is recorded by the blocks around it too."""


@contextlib.contextmanager
def termination_requests(
    signals: Sequence[signal.Signals] = (signal.SIGTERM,),
) -> Iterator[Callable[[], bool]]:
    """Within the block each of ``signals`` (SIGTERM by default) sets a flag instead of ending
    the process (the previous handlers are restored after); yields a function that tells whether
    one arrived since the block began, or had arrived in an enclosing block before it began
    (always False outside the main thread, where handlers cannot be set).

    Blocks nest: a run's worker listens to SIGTERM and SIGINT around the training loop's own
    SIGTERM block, so that a task cancelled by interrupting its process (Ray's cancellation
    raises SIGINT's handler) stops training at a safe point as SIGTERM does."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    if any(event.is_set() for event in _ENCLOSING):
        received.set()

    def record(signum: int, frame: FrameType | None) -> None:
        for event in _ENCLOSING:
            event.set()

    previous = {signum: signal.signal(signum, record) for signum in signals}
    _ENCLOSING.append(received)
    try:
        yield received.is_set
    finally:
        _ENCLOSING.remove(received)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def forward_termination() -> None:
    """Send SIGTERM to this process's live child processes (worker processes that honour it)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]

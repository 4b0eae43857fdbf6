"""Count what a piece of torch code asks of the device: the operations it runs (views excluded:
on a GPU each of the others is a kernel launch) and the values it reads back to the host (on a GPU
each is a sync that drains the launch queue), the read-backs by the call site that made them.

    with OpCounter() as counted:
        model(inputs).sum().backward()
    counted.operations, counted.read_backs, counted.read_back_sites.most_common(3)

Counted on any device (CPU included), which is how the tests and `bench/train_step_ops.py` hold
the training step's launches and syncs without a GPU. What stays on the CPU in a GPU run counts
too: reading Adam's step counters (CPU tensors there, no sync) is a read-back here.
"""

from __future__ import annotations

import collections
import functools
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Inside it: ``operations`` (non-view aten operations), ``read_backs`` (values read back to
    the host: ``.item()``, ``int(t)``, ``if t.any()``) and ``read_back_sites`` (``Counter`` of
    ``"file.py:line"`` of the innermost project frame, or ``"?"`` where none is)."""

    def __init__(self) -> None:
        super().__init__()
        self.operations = 0
        self.read_backs = 0
        self.read_back_sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        if func.overloadpacket is torch.ops.aten._local_scalar_dense:
            self.read_backs += 1
            self.read_back_sites[_call_site()] += 1
        if not func.is_view:
            self.operations += 1
        return func(*args, **(kwargs or {}))


@functools.cache
def _project_folders() -> tuple[str, ...]:
    """The folders of the packages whose frames name a read-back's call site."""
    import kernels
    import toy_tasks
    import workbench

    return tuple(str(Path(package.__file__).parent) for package in (workbench, kernels, toy_tasks))


def _call_site() -> str:
    frames = [
        frame
        for frame in traceback.extract_stack()
        if frame.filename.startswith(_project_folders()) and frame.filename != __file__
    ]
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"

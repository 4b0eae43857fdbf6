"""The registry of sparse-attention methods: each method is a selection (`SparseMethod.select` ->
`kernels.layout.Layout`) plus an optional correction (`SparseMethod.correct`).

    method = workbench.sparse.get("sink_window", sink=4, window=64)
    layout = method.select(q, k, causal=True)
    out = kernels.api.sparse_attention(q, k, v, layout)

A method is one module of this package holding a frozen dataclass decorated with
`register_method` (see `workbench.sparse.registry`). Importing the package imports each of its
modules, in sorted order, so that their methods register; ``names()`` is sorted whatever the order.
"""

from __future__ import annotations

import importlib
import pkgutil

from workbench.sparse.base import SparseMethod
from workbench.sparse.registry import (
    describe,
    get,
    installable,
    method_class,
    names,
    register_method,
    short_input,
)

for _module in sorted(module.name for module in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "SparseMethod",
    "describe",
    "get",
    "installable",
    "method_class",
    "names",
    "register_method",
    "short_input",
]

"""The registry of sparse-attention methods: each method is a selection (`SparseMethod.select` ->
`kernels.layout.Layout`) plus an optional correction (`SparseMethod.correct`).

    method = workbench.sparse.get("sink_window", sink=4, window=64)
    layout = method.select(q, k, causal=True)
    out = kernels.api.sparse_attention(q, k, v, layout)
"""

from __future__ import annotations

import dataclasses

from workbench.sparse.base import SparseMethod
from workbench.sparse.block_top_k import BlockTopK
from workbench.sparse.corrections import Delta, Rettention
from workbench.sparse.power import Power
from workbench.sparse.quest import Quest
from workbench.sparse.sink_window import AShape, SinkWindow
from workbench.sparse.static import Banded, BlockLocal, RandomKeys, Strided
from workbench.sparse.top_k import TopK
from workbench.sparse.top_p import TopP
from workbench.sparse.vertical_slash import VerticalSlash
from workbench.sparse.xattention import XAttention

_METHODS: dict[str, type[SparseMethod]] = {
    cls.name: cls
    for cls in (
        TopK,
        TopP,
        BlockTopK,
        Quest,
        XAttention,
        VerticalSlash,
        SinkWindow,
        AShape,
        Power,
        RandomKeys,
        Strided,
        Banded,
        BlockLocal,
        Delta,
        Rettention,
    )
}


def names() -> list[str]:
    """Names of the registered methods, in registry order."""
    return list(_METHODS)


def get(name: str, **hyper_parameters: object) -> SparseMethod:
    """The method ``name`` with the given hyper-parameters (defaults for the others).

    Raises ``ValueError`` for an unknown name, an unknown hyper-parameter or one out of range.
    """
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown sparse method {name!r}; registered: {', '.join(_METHODS)}")
    cls = _METHODS[name]
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(hyper_parameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name} has no hyper-parameter {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return cls(**hyper_parameters)


def describe() -> list[tuple[str, str, str]]:
    """``(name, description, paper)`` of every registered method."""
    return [(name, cls.description, cls.paper) for name, cls in _METHODS.items()]


__all__ = ["SparseMethod", "describe", "get", "names"]

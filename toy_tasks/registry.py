"""Name -> task-config registry: ``toy_tasks.get("assoc_recall", n_pairs=8)``. A task registers
itself in its own module:

    @register_task
    @dataclass(frozen=True)
    class AssociativeRecall(ToyTask):
        name: ClassVar[str] = "assoc_recall"
        ...

Importing `toy_tasks` imports every module of the package, so every decorated class is registered
before `names`, `get` or `describe` is called. Nothing else lists the tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from toy_tasks.base import ToyTask

T = TypeVar("T", bound=type[ToyTask])

_TASKS: dict[str, type[ToyTask]] = {}

_DESCRIBED_BY = ("name", "description", "relevance", "paper")
"""Class attributes every registered task sets (non-empty strings)."""


def register_task(cls: T) -> T:
    """Class decorator adding a `ToyTask` subclass to the registry under ``cls.name``.

    A module run as a script defines its classes a second time in ``__main__``; those copies are
    not registered (the package import registered the module's own classes)."""
    if not (isinstance(cls, type) and issubclass(cls, ToyTask)):
        raise TypeError(f"register_task takes a ToyTask subclass, got {cls!r}")
    for attribute in _DESCRIBED_BY:
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value:
            raise TypeError(f"{cls.__name__}.{attribute} must be a non-empty string")
    if cls.__module__ == "__main__":
        return cls
    if cls.name in _TASKS:
        raise ValueError(f"toy task {cls.name!r} is already registered")
    _TASKS[cls.name] = cls
    return cls


def names() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def task_class(name: str) -> type[ToyTask]:
    """The config class registered as ``name``; ``ValueError`` for an unknown name."""
    if not isinstance(name, str) or name not in _TASKS:
        raise ValueError(f"unknown toy task {name!r}; known tasks: {', '.join(names())}")
    return _TASKS[name]


def get(name: str, **overrides: Any) -> ToyTask:
    """A validated config of task ``name`` with its defaults, some replaced by ``overrides``.

    Raises ``ValueError`` for an unknown name, an unknown parameter or one out of range.
    """
    cls = task_class(name)
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"toy task {name!r} has no parameter {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    return cls(**overrides)


def describe() -> list[tuple[str, str, str]]:
    """``(name, description, paper)`` of every registered task, in `names` order."""
    return [(name, _TASKS[name].description, _TASKS[name].paper) for name in names()]

"""Name -> task-config registry: ``toy_tasks.get("assoc_recall", n_pairs=8)``."""

from __future__ import annotations

from typing import Any

from toy_tasks.base import ToyTask

_TASKS: dict[str, type[ToyTask]] = {}


def register(task_class: type[ToyTask]) -> type[ToyTask]:
    """Class decorator adding a task config to the registry under ``task_class.name``."""
    if task_class.name in _TASKS:
        raise ValueError(f"toy task {task_class.name!r} is already registered")
    _TASKS[task_class.name] = task_class
    return task_class


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)


def task_class(name: str) -> type[ToyTask]:
    """The config class registered as ``name``."""
    if name not in _TASKS:
        raise ValueError(f"unknown toy task {name!r}; known tasks: {', '.join(names())}")
    return _TASKS[name]


def get(name: str, **overrides: Any) -> ToyTask:
    """A validated config of task ``name`` with its defaults, some replaced by ``overrides``."""
    cls = task_class(name)
    try:
        return cls(**overrides)
    except TypeError as error:  # unknown keyword
        raise ValueError(f"bad parameters for toy task {name!r}: {error}") from None

"""Name -> sparse-method registry. A method registers itself in its own module:

    @register_method
    @dataclass(frozen=True, eq=False)
    class TopK(SparseMethod):
        name = "top_k"
        ...

Importing `workbench.sparse` imports every module of the package, so every decorated class is
registered before `names`, `get` or `describe` is called. Nothing else lists the methods.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from workbench.sparse.base import SparseMethod

M = TypeVar("M", bound=type[SparseMethod])

_METHODS: dict[str, type[SparseMethod]] = {}

_DESCRIBED_BY = ("name", "description", "paper")
"""Class attributes every registered method sets (non-empty strings)."""


def register_method(cls: M) -> M:
    """Class decorator adding a `SparseMethod` subclass to the registry under ``cls.name``.

    A module run as a script (``python -m workbench.sparse.top_k``) defines its classes a second
    time in ``__main__``; those copies are not registered (the package import registered the
    module's own classes)."""
    if not (isinstance(cls, type) and issubclass(cls, SparseMethod)):
        raise TypeError(f"register_method takes a SparseMethod subclass, got {cls!r}")
    for attribute in _DESCRIBED_BY:
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value:
            raise TypeError(f"{cls.__name__}.{attribute} must be a non-empty string")
    if cls.__module__ == "__main__":
        return cls
    if cls.name in _METHODS:
        raise ValueError(f"sparse method {cls.name!r} is already registered")
    _METHODS[cls.name] = cls
    return cls


def names() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[SparseMethod]:
    """The class registered as ``name``; ``ValueError`` for an unknown name."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown sparse method {name!r}; registered: {', '.join(names())}")
    return _METHODS[name]


def get(name: str, **hyper_parameters: object) -> SparseMethod:
    """The method ``name`` with the given hyper-parameters (defaults for the others).

    Raises ``ValueError`` for an unknown name, an unknown hyper-parameter or one out of range.
    """
    cls = method_class(name)
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(hyper_parameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name} has no hyper-parameter {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return cls(**hyper_parameters)


def installable() -> list[str]:
    """Names of the methods `workbench.sparse.patch.sparsify` installs as they are: every
    registered one but those that need calibration (``needs_calibration``), sorted."""
    return [name for name in names() if not _METHODS[name].needs_calibration]


def short_input(name: str, **hyper_parameters: object) -> SparseMethod:
    """The method ``name`` with its settings for inputs of a few dozen tokens
    (``short_input_hyper_parameters``, where the defaults would keep every key), overridden by
    ``hyper_parameters``; errors as `get`."""
    defaults = dict(method_class(name).short_input_hyper_parameters)
    return get(name, **{**defaults, **hyper_parameters})


def describe() -> list[tuple[str, str, str]]:
    """``(name, description, paper)`` of every registered method, in `names` order."""
    return [(name, _METHODS[name].description, _METHODS[name].paper) for name in names()]


def as_method(value: SparseMethod | str, name: str = "base") -> SparseMethod:
    """``value`` itself, or the registered method of that name with default hyper-parameters;
    errors name the argument ``name`` that held ``value``."""
    if isinstance(value, str):
        if value not in names():
            raise ValueError(
                f"{name} must be a SparseMethod or a registered name ({', '.join(names())}), "
                f"got {value!r}"
            )
        return get(value)
    if not isinstance(value, SparseMethod):
        raise ValueError(f"{name} must be a SparseMethod or a registered name, got {value!r}")
    return value

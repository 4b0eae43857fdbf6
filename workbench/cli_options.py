"""Parsing of the command line's repeatable ``KEY=VALUE`` options (``--set``)."""

from __future__ import annotations

from typing import Any

import typer


def parse_overrides(settings: list[str]) -> dict[str, Any]:
    """``["n_pairs=8", "noise=0.1", "n_queries=None"]`` -> ``{"n_pairs": 8, "noise": 0.1, ...}``
    (values parsed as YAML scalars)."""
    import yaml

    overrides = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {setting!r}", param_hint="--set")
        overrides[key.strip()] = None if value.strip() == "None" else yaml.safe_load(value)
    return overrides


def parse_method_settings(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["sink_window.window=8", "top_k.k=4"]`` -> ``{"sink_window": {"window": 8}, ...}``."""
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in parse_overrides(settings).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise typer.BadParameter(f"expected METHOD.KEY=VALUE, got {key!r}", param_hint="--set")
        grouped.setdefault(method, {})[name] = value
    return grouped

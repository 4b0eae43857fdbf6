"""Atomic file writes: a reader never sees a half-written result."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` on a temporary file in ``path``'s folder, flush it to disk,
    then rename it over ``path`` (atomic on POSIX). The file gets the permissions a plain
    ``open(path, "w")`` would give it (those of the file it replaces, else ``0o666`` less the
    umask), not the private ``0o600`` of a temporary file. On error the temporary file is removed
    and any old ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, _mode_for(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _mode_for(path: Path) -> int:
    """Permission bits of the existing ``path``, else ``0o666`` less the process umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``atomic_write_text`` of ``data`` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write ``tensors`` (moved to CPU, made contiguous) as a safetensors file atomically."""
    from safetensors.torch import save_file

    cpu = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    return atomic_write(path, lambda temporary: save_file(cpu, str(temporary)))


PLOTLY_SCRIPT = "plotly.min.js"


def write_figure(figure: Any, path: str | Path) -> Path:
    """Write a plotly figure as HTML, atomically, that opens offline: it loads plotly.js from a
    ``plotly.min.js`` written once beside it (not from a CDN, and not embedded in every file).
    The figure's element is named after the file, so the same figure gives the same bytes."""
    from plotly.offline import get_plotlyjs

    path = Path(path)
    script = path.parent / PLOTLY_SCRIPT
    if not script.exists():
        atomic_write_text(script, get_plotlyjs())
    html = figure.to_html(include_plotlyjs=PLOTLY_SCRIPT, div_id=f"figure-{path.stem}")
    return atomic_write_text(path, html)

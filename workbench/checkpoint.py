"""Checkpoints of a training run: each one a single unit, written atomically and verified on read.

On disk, in a run folder ``out_dir``::

    checkpoints/step-<n>/tensors.safetensors   tensors by name, and ``train/step`` = n
    checkpoints/step-<n>/state.json            the JSON state, with ``"step": n``
    checkpoints/step-<n>/manifest.json         {"format": 1, "step": n,
                                                "files": {name: {"bytes": ..., "sha256": ...}}}
    checkpoints/step-<n>[.old].partial/        a checkpoint being written (removed): ignored
    replaced-<time>/...                        files an explicit choice moved aside (never read)

Writing (`write`): the tensors, the state and then the manifest (sizes and sha256 of the other two)
go into ``step-<n>.partial/``, each file flushed to disk; the folder is renamed to ``step-<n>``
(atomic), read back and verified, and only then are the checkpoints older than the newest `KEEP`
removed (renamed to ``.old.partial`` first, so a half-removed one is never taken for one).
A kill at any point thus leaves every earlier checkpoint intact, plus at most a ``.partial``
folder, which readers ignore and the next write removes.

Reading (`load`): a ``step-<n>`` folder is a complete checkpoint; it must match its manifest (each
file's size and sha256; the step in the folder name, the manifest, the state and the tensors). A
missing, truncated, changed or unparsable file is damage: `CheckpointError` names the file and the
choices (resume from the previous checkpoint that verifies, or start afresh with the old files moved
aside). Nothing falls back silently and nothing is deleted implicitly.

Legacy run folders hold one ``checkpoint.safetensors`` + ``checkpoint.json`` pair, written one
after the other without a checksum (both record the step). `load` reads such a pair when there is
no ``step-<n>`` folder (a pair of different steps is damage); `migrate_legacy` rewrites it as
``checkpoints/step-<n>/`` and then removes the pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT = 1
"""Version of the manifest layout."""
CHECKPOINTS = "checkpoints"
TENSORS = "tensors.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
PARTIAL = ".partial"
"""Suffix of a checkpoint folder being written or removed (not a checkpoint)."""
KEEP = 2
"""Complete checkpoints kept: the newest and the one before it."""
STEP_TENSOR = "train/step"
LEGACY_TENSORS = "checkpoint.safetensors"
LEGACY_STATE = "checkpoint.json"
REPLACED = "replaced-"
"""Prefix of the folders that files moved aside go to (``replaced-<time>``)."""

_STEP_FOLDER = re.compile(r"step-(\d+)")

RESUME_PREVIOUS = (
    "resume from it with train(..., resume='previous') (`workbench run --resume previous`), which "
    "moves the damaged checkpoints into replaced-<time>/"
)
RESTART = (
    "start the run afresh with train(..., resume=False) (`workbench run --resume restart`), which "
    "moves its checkpoints and log into replaced-<time>/ (nothing is deleted)"
)


class CheckpointError(ValueError):
    """A checkpoint, or a run folder's files, that cannot be trusted; the message names the file
    and the choices."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and verified.

    Attributes:
        step: the step it was written at.
        state: the JSON state (with ``"step"``).
        tensors: name -> CPU tensor (with ``train/step``).
        path: its ``step-<n>`` folder (a legacy checkpoint: its ``checkpoint.json``).
    """

    step: int
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path


# ---------------------------------------------------------------------------- writing
def write(
    out_dir: str | Path, step: int, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Path:
    """Write the checkpoint of ``step`` as ``out_dir/checkpoints/step-<step>/`` (``step`` is
    recorded in the state, the tensors and the manifest), verify it as read back from disk, then
    remove the checkpoints older than the newest `KEEP` and any ``.partial`` folder. Returns the
    folder."""
    import torch
    from safetensors.torch import save

    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    folder, partial = root / f"step-{step}", root / f"step-{step}{PARTIAL}"
    cpu = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    files = {
        TENSORS: save({**cpu, STEP_TENSOR: torch.tensor(step, dtype=torch.int64)}),
        STATE: _json_bytes({**state, "step": step}),
    }
    manifest = {
        "format": FORMAT,
        "step": step,
        "files": {n: _fingerprint(d) for n, d in files.items()},
    }
    if partial.exists():
        _remove(partial)  # left by a write that was killed
    _make_dir(partial)
    for name, data in [*files.items(), (MANIFEST, _json_bytes(manifest))]:  # the manifest last
        _write_file(partial / name, data)
    _sync(partial)
    if folder.exists():
        _discard(folder)  # an earlier checkpoint of the same step (the same state)
    _rename(partial, folder)
    _sync(root)
    read_folder(folder)
    _prune(root, step)
    return folder


def _prune(root: Path, newest: int) -> None:
    """Remove the checkpoints at or below ``newest`` but the `KEEP` newest, and the partial ones."""
    older = [folder for folder in step_folders(root.parent) if folder_step(folder) <= newest]
    for folder in older[KEEP:]:
        _discard(folder)
    for partial in sorted(root.glob(f"*{PARTIAL}")):
        _remove(partial)


def _discard(folder: Path) -> None:
    """Remove a checkpoint folder: renamed to ``step-<n>.old.partial`` first, so that a kill while
    removing leaves no half-removed ``step-<n>``."""
    partial = folder.with_name(f"{folder.name}.old{PARTIAL}")
    if partial.exists():
        _remove(partial)
    _rename(folder, partial)
    _remove(partial)


# The file-system changes a write makes, one function each (a test stops a write at any of them).
def _make_dir(path: Path) -> None:
    path.mkdir()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sync(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _fingerprint(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------------------- reading
def step_folders(out_dir: str | Path) -> list[Path]:
    """The ``checkpoints/step-<n>`` folders of ``out_dir``, newest first (``.partial`` ones are
    not checkpoints)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        (path for path in root.iterdir() if _STEP_FOLDER.fullmatch(path.name)),
        key=folder_step,
        reverse=True,
    )


def folder_step(folder: Path) -> int:
    """The step of a ``step-<n>`` folder."""
    return int(folder.name.removeprefix("step-"))


def read_folder(folder: str | Path) -> Checkpoint:
    """The checkpoint in a ``step-<n>`` folder, verified against its manifest; `CheckpointError`
    (naming the file) when it does not verify."""
    folder = Path(folder)
    step = folder_step(folder)
    manifest_path = folder / MANIFEST
    listed = _manifest_files(_parse_json(_read(manifest_path), manifest_path), manifest_path, step)
    data = {name: _verified(folder / name, listed[name]) for name in (TENSORS, STATE)}
    state = _parse_json(data[STATE], folder / STATE)
    tensors = _parse_safetensors(data[TENSORS], folder / TENSORS)
    _check_steps(step, (folder / STATE, _state_step(state)), (folder / TENSORS, tensors))
    return Checkpoint(step, state, tensors, folder)


def _manifest_files(manifest: Any, path: Path, step: int) -> dict[str, dict[str, Any]]:
    """``{file name: {"bytes", "sha256"}}`` of a parsed manifest, checked."""
    try:
        files = manifest["files"]
        listed = {name: {"bytes": int(files[name]["bytes"])} for name in (TENSORS, STATE)}
        for name in listed:
            listed[name]["sha256"] = str(files[name]["sha256"])
        recorded = manifest["step"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a checkpoint manifest ({error!r})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT}")
    if recorded != step:
        raise CheckpointError(f"{path} records step {recorded!r} in the folder of step {step}")
    return listed


def _verified(path: Path, expected: Mapping[str, Any]) -> bytes:
    """The bytes of ``path`` if their size and sha256 are ``expected``'s."""
    data = _read(path)
    if len(data) != expected["bytes"]:
        raise CheckpointError(
            f"{path} has {len(data)} bytes, its manifest records {expected['bytes']}: the file "
            "was truncated or changed"
        )
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(
            f"{path} does not match the sha256 in its manifest: the file was changed or corrupted"
        )
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read ({error})") from error


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None


def _parse_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as error:  # safetensors raises its own error types (and others on garbage)
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None


def _state_step(state: Any) -> Any:
    return state.get("step") if isinstance(state, dict) else None


def _check_steps(
    step: int, state: tuple[Path, Any], tensors: tuple[Path, Mapping[str, torch.Tensor]]
) -> None:
    """The state's ``step`` and the tensors' ``train/step`` must be ``step``."""
    (state_path, state_step), (tensors_path, values) = state, tensors
    tensor_step = int(values[STEP_TENSOR]) if STEP_TENSOR in values else None
    for path, recorded in ((state_path, state_step), (tensors_path, tensor_step)):
        if recorded != step:
            raise CheckpointError(f"{path} records step {recorded}, expected {step}")


# ---------------------------------------------------------------------------- choosing one
def load(out_dir: str | Path, *, previous: bool = False) -> Checkpoint | None:
    """The checkpoint of ``out_dir`` to continue from (None: there is none).

    The newest ``step-<n>`` folder must verify; when it does not, `CheckpointError` names the
    damaged file and the choices. ``previous=True`` explicitly takes the newest one that verifies
    instead (raising when none does). Without ``step-<n>`` folders a legacy pair is read.
    """
    folders = step_folders(out_dir)
    if not folders:
        return read_legacy(out_dir)
    for index, folder in enumerate(folders):
        try:
            return read_folder(folder)
        except CheckpointError as error:
            if not previous:
                raise CheckpointError(f"{error}. {_choices(folders[index + 1 :])}") from None
    raise CheckpointError(
        f"no checkpoint in {Path(out_dir) / CHECKPOINTS} verifies. To go on, {RESTART}."
    )


def _choices(older: Iterable[Path]) -> str:
    """What the user can do about a damaged checkpoint, given the ``older`` folders."""
    for folder in older:
        try:
            read_folder(folder)
        except CheckpointError:
            continue
        return f"The previous checkpoint {folder} verifies: {RESUME_PREVIOUS}; or {RESTART}."
    return f"No earlier checkpoint verifies: {RESTART}."


# ---------------------------------------------------------------------------- legacy pair
def read_legacy(out_dir: str | Path) -> Checkpoint | None:
    """The legacy ``checkpoint.safetensors`` + ``checkpoint.json`` pair of ``out_dir`` (None:
    neither file is there); `CheckpointError` when one is missing, unreadable, or the two record
    different steps."""
    out_dir = Path(out_dir)
    state_path, tensors_path = out_dir / LEGACY_STATE, out_dir / LEGACY_TENSORS
    if not state_path.exists() and not tensors_path.exists():
        return None
    try:
        state = _parse_json(_read(state_path), state_path)
        tensors = _parse_safetensors(_read(tensors_path), tensors_path)
        step = _state_step(state)
        if not isinstance(step, int):
            raise CheckpointError(f"{state_path} records no step")
        _check_steps(step, (state_path, step), (tensors_path, tensors))
    except CheckpointError as error:
        raise CheckpointError(
            f"{error} (a checkpoint of the old format, without an earlier copy). To go on, "
            f"{RESTART}."
        ) from None
    return Checkpoint(step, state, tensors, state_path)


def migrate_legacy(out_dir: str | Path) -> Path | None:
    """Rewrite the legacy pair of ``out_dir`` as ``checkpoints/step-<n>/`` (verified), then remove
    the pair; returns the folder (None: no legacy files). Raises like `read_legacy`."""
    out_dir = Path(out_dir)
    legacy = read_legacy(out_dir)
    if legacy is None:
        return None
    folder = write(out_dir, legacy.step, legacy.state, legacy.tensors)
    for name in (LEGACY_TENSORS, LEGACY_STATE):
        (out_dir / name).unlink()
    return folder


# ---------------------------------------------------------------------------- moving aside
def move_aside(out_dir: str | Path, paths: Iterable[Path]) -> Path | None:
    """Move ``paths`` (files or folders inside ``out_dir``; missing ones are skipped) into a new
    ``out_dir/replaced-<time>/`` under the same relative paths; returns that folder (None: nothing
    to move)."""
    out_dir = Path(out_dir)
    present = [Path(path) for path in paths if Path(path).exists()]
    if not present:
        return None
    target = _new_replaced_folder(out_dir)
    for path in present:
        destination = target / path.relative_to(out_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
    return target


def _new_replaced_folder(out_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = out_dir / f"{REPLACED}{stamp}{f'-{attempt}' if attempt else ''}"
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"too many {REPLACED}{stamp}* folders in {out_dir}")

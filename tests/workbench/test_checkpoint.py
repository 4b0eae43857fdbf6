"""`workbench.checkpoint` through `workbench.train.train`: damage is named and never resumed
silently, run data is moved aside and never deleted, and a kill at any point of a checkpoint write
resumes bit for bit (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train import TINY, Interrupt, recall_config

from workbench import checkpoint
from workbench.checkpoint import CheckpointError
from workbench.train import load_model, train

CONFIG = recall_config(
    model=TINY, steps=6, batch_size=4, eval_every=2, eval_batch_size=8, metrics_every=1,
    checkpoint_every=2,
)  # fmt: skip
"""Checkpoints at steps 0, 2, 4 and 6; the run keeps ``step-4`` and ``step-6``."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of `CONFIG`."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(CONFIG, out, progress=False)
    assert result.checkpoint_dir == out / "checkpoints" / "step-6"
    assert [path.name for path in checkpoint.step_folders(out)] == ["step-6", "step-4"]
    return out


def copy_run(reference: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference, tmp_path / "run"))


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` -> its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_same_run(run: Path, reference: Path) -> None:
    """The same log and the same final checkpoint (its manifest holds the sha256 of the tensors,
    model and optimizer, and of the state) as the uninterrupted run."""
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    newest = [checkpoint.step_folders(path)[0] for path in (run, reference)]
    assert newest[0].name == newest[1].name
    assert files(newest[0]) == files(newest[1])
    assert not list((run / "checkpoints").glob("*.partial"))


def replaced_folder(run: Path) -> Path:
    (folder,) = run.glob("replaced-*")
    return folder


# ---------------------------------------------------------------------------- damage
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))


def flip_a_weight_byte(path: Path) -> None:
    """Flip one bit in the middle of the tensor data (after the safetensors header)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[(header + len(data)) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("tensors.safetensors", truncate, "was truncated or changed"),
        ("tensors.safetensors", garbage, "does not match the sha256"),
        ("tensors.safetensors", flip_a_weight_byte, "does not match the sha256"),
        ("state.json", truncate, "was truncated or changed"),
        ("state.json", delete, "is missing"),
        ("manifest.json", truncate, "is not valid JSON"),
        ("manifest.json", delete, "is missing"),
    ],
    ids=[
        "truncated-tensors",
        "garbage-tensors",
        "flipped-bytes-in-tensors",
        "truncated-state",
        "deleted-state",
        "truncated-manifest",
        "deleted-manifest",
    ],
)
def test_a_damaged_checkpoint_is_named_and_resume_previous_continues_identically(
    reference: Path, tmp_path: Path, name: str, damage, message: str
) -> None:
    run = copy_run(reference, tmp_path)
    damaged = run / "checkpoints" / "step-6" / name
    damage(damaged)
    before = files(run)
    for attempt in (lambda: train(CONFIG, run, progress=False), lambda: load_model(run)):
        with pytest.raises(CheckpointError, match=message) as raised:
            attempt()
        text = str(raised.value)
        assert str(damaged) in text
        assert f"previous checkpoint {run / 'checkpoints' / 'step-4'} verifies" in text
        assert "resume='previous'" in text and "resume=False" in text
        assert files(run) == before  # nothing resumed, moved or deleted
    assert load_model(run, previous=True)[2] == 4
    resumed = train(CONFIG, run, resume="previous", progress=False)
    assert resumed.resumed_from == 4
    assert_same_run(run, reference)
    aside = replaced_folder(run)  # the damaged checkpoint and the log as they were
    kept = {path: data for path, data in before.items() if path.startswith("checkpoints/step-6/")}
    kept["metrics.jsonl"] = before["metrics.jsonl"]
    assert files(aside) == kept


def test_unreadable_files_that_match_their_manifest_are_named(tmp_path: Path) -> None:
    folder = checkpoint.write(tmp_path, 3, {"note": "x"}, {"w": torch.ones(2)})
    assert checkpoint.load(tmp_path).state == {"note": "x", "step": 3}
    for name, content, message in [
        ("tensors.safetensors", b"\x00" * 40, "is not a readable safetensors file"),
        ("state.json", b'{"step": 3', "is not valid JSON"),
    ]:
        (folder / name).write_bytes(content)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"][name] = checkpoint._fingerprint(content)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match=message) as raised:
            checkpoint.load(tmp_path)
        assert str(folder / name) in str(raised.value)
        assert "No earlier checkpoint verifies" in str(raised.value)
        checkpoint.write(tmp_path, 3, {"note": "x"}, {"w": torch.ones(2)})  # a sound one again


def test_no_checkpoint_that_verifies_leaves_only_a_restart(reference: Path, tmp_path: Path) -> None:
    run = copy_run(reference, tmp_path)
    for folder in checkpoint.step_folders(run):
        flip_a_weight_byte(folder / "tensors.safetensors")
    with pytest.raises(CheckpointError, match="No earlier checkpoint verifies"):
        train(CONFIG, run, progress=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies"):
        train(CONFIG, run, resume="previous", progress=False)
    before = files(run)
    fresh = train(CONFIG, run, resume=False, progress=False)
    assert fresh.resumed_from is None
    assert_same_run(run, reference)
    assert files(replaced_folder(run)) == before  # moved aside, not deleted


def test_a_log_without_checkpoints_is_refused_not_deleted(reference: Path, tmp_path: Path) -> None:
    run = copy_run(reference, tmp_path)
    shutil.rmtree(run / "checkpoints")
    log = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=r"up to step 6 but .* has no checkpoint") as raised:
        train(CONFIG, run, progress=False)
    assert str(run / "metrics.jsonl") in str(raised.value) and "resume=False" in str(raised.value)
    assert (run / "metrics.jsonl").read_bytes() == log
    train(CONFIG, run, resume=False, progress=False)
    assert (replaced_folder(run) / "metrics.jsonl").read_bytes() == log
    assert_same_run(run, reference)


def test_resume_must_be_a_known_choice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resume must be True, False or 'previous'"):
        train(CONFIG, tmp_path, resume="newest", progress=False)


# ---------------------------------------------------------------------------- kills
class KillDuring:
    """Stops the write of the checkpoint of ``step`` at its ``operation``-th file-system change
    (0-based): a file is left half written, a folder being removed loses one file, a rename or
    a new folder does not happen. Raises `Interrupt`, as a kill would stop the process there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: int, operation: int) -> None:
        self.step, self.operation = step, operation
        self.writing: int | None = None
        self.count = 0
        self.killed = False
        write = checkpoint.write

        def watched_write(out_dir, step, state, tensors):
            self.writing = step
            return write(out_dir, step, state, tensors)

        monkeypatch.setattr(checkpoint, "write", watched_write)
        for name in ("_make_dir", "_write_file", "_rename", "_remove"):
            monkeypatch.setattr(checkpoint, name, self._watch(name, getattr(checkpoint, name)))

    def _watch(self, name: str, operation):
        def watched(path: Path, *args):
            if self.killed or self.writing != self.step:
                return operation(path, *args)
            self.count += 1
            if self.count - 1 < self.operation:
                return operation(path, *args)
            self.killed = True
            if name == "_write_file":
                (data,) = args
                operation(path, data[: len(data) // 2])
            elif name == "_remove" and path.is_dir():
                next(p for p in sorted(path.iterdir())).unlink()
            raise Interrupt

        return watched


@pytest.mark.parametrize(
    ("step", "operation"),
    [(0, operation) for operation in range(5)] + [(4, operation) for operation in range(7)],
    ids=lambda value: str(value),
)
def test_a_kill_at_any_point_of_a_checkpoint_write_resumes_identically(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int, operation: int
) -> None:
    """The write of step 0 makes 5 changes (a folder, 3 files, the rename); the write of step 4,
    2 more: the rename and removal of ``step-0`` (older than the 2 kept)."""
    run = tmp_path / "run"
    kill = KillDuring(monkeypatch, step, operation)
    with pytest.raises(Interrupt):
        train(CONFIG, run, progress=False)
    assert kill.killed
    monkeypatch.undo()
    resumed = train(CONFIG, run, progress=False)
    assert resumed.resumed_from in (None, 0, 2, 4)
    assert_same_run(run, reference)
    assert [path.name for path in checkpoint.step_folders(run)] == ["step-6", "step-4"]
    assert not list(run.glob("replaced-*"))


# ---------------------------------------------------------------------------- legacy pair
def make_legacy(reference: Path, tmp_path: Path) -> Path:
    """A run of the old format, checkpointed at step 4 (its log runs on to step 6)."""
    run = copy_run(reference, tmp_path)
    step_4 = run / "checkpoints" / "step-4"
    shutil.copy(step_4 / "tensors.safetensors", run / "checkpoint.safetensors")
    shutil.copy(step_4 / "state.json", run / "checkpoint.json")
    shutil.rmtree(run / "checkpoints")
    return run


@pytest.mark.parametrize("migrated_before", [False, True], ids=["legacy", "killed-migrating"])
def test_a_legacy_run_loads_and_resumes_identically(
    reference: Path, tmp_path: Path, migrated_before: bool
) -> None:
    run = make_legacy(reference, tmp_path)
    if migrated_before:  # a kill after the migration wrote step-4 but before it removed the pair
        shutil.copytree(reference / "checkpoints" / "step-4", run / "checkpoints" / "step-4")
    else:
        _, config, step = load_model(run)
        assert step == 4 and config == CONFIG
    resumed = train(CONFIG, run, progress=False)
    assert resumed.resumed_from == 4
    assert not (run / "checkpoint.json").exists() and not (run / "checkpoint.safetensors").exists()
    assert_same_run(run, reference)


def write_step_2_state(run: Path) -> None:
    state = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**state, "step": 2}))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("checkpoint.safetensors", truncate, "is not a readable safetensors file"),
        ("checkpoint.safetensors", garbage, "is not a readable safetensors file"),
        ("checkpoint.json", truncate, "is not valid JSON"),
        ("checkpoint.json", delete, "is missing"),
        ("checkpoint.json", lambda path: write_step_2_state(path.parent), "records step 4"),
    ],
    ids=["truncated-tensors", "garbage-tensors", "truncated-json", "deleted-json", "torn"],
)
def test_a_damaged_legacy_pair_is_named_and_kept_until_an_explicit_restart(
    reference: Path, tmp_path: Path, name: str, damage, message: str
) -> None:
    run = make_legacy(reference, tmp_path)
    damage(run / name)
    before = files(run)
    with pytest.raises(CheckpointError, match=message) as raised:
        train(CONFIG, run, progress=False)
    text = str(raised.value)
    assert str(run / "checkpoint.") in text and "resume=False" in text
    assert files(run) == before  # the tensors and the log are still there
    with pytest.raises(CheckpointError, match=message):
        load_model(run)
    fresh = train(CONFIG, run, resume=False, progress=False)
    assert fresh.resumed_from is None
    assert files(replaced_folder(run)) == before
    assert_same_run(run, reference)

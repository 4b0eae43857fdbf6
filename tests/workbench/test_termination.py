"""`workbench.termination`: SIGTERM as a stop request, in one process and across workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_experiments import BASE, make_spec

from workbench import checkpoint
from workbench.experiments import config_hash, load_spec, run_experiment
from workbench.termination import Terminated, termination_requests


def test_sigterm_becomes_a_request_within_the_block_only() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with termination_requests() as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert requested()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_outside_the_main_thread_nothing_changes() -> None:
    seen = []

    def worker() -> None:
        with termination_requests() as requested:
            seen.append((requested(), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [(False, before)]


WAIT_SECONDS = 600.0
"""How long a test waits for a process to start training or to stop: a fresh process imports
torch and TransformerLens first (10-40 s on a loaded 2-core machine), so this is a wide margin
that only a hang reaches."""


def _terminate_when_training(run_dirs: list[Path], timeout: float = WAIT_SECONDS) -> None:
    """SIGTERM this process once every run in ``run_dirs`` has logged a training step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [d / "metrics.jsonl" for d in run_dirs if (d / "metrics.jsonl").exists()]
        logged = [log.read_text().count("\n") for log in logs]
        if len(logged) == len(run_dirs) and min(logged) >= 2:
            break
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_the_runs_in_training_and_cancels_the_queued_ones(tmp_path) -> None:
    long_runs = {**BASE, "steps": 1_000_000, "metrics_every": 1, "eval_every": 1_000_000}
    spec = make_spec(sweep={"task.seq_len": [8, 12, 16]}, seeds=[0], base=long_runs)
    directories = [tmp_path / "toy" / config_hash(config) for config in spec.configs()]
    trigger = threading.Thread(target=_terminate_when_training, args=(directories[:2],))
    trigger.start()
    with pytest.raises(Terminated):
        run_experiment(spec, runs_dir=tmp_path, progress=False, workers=2)
    trigger.join()
    for directory in directories[:2]:  # in training: checkpointed at the step they stopped at
        last = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        assert checkpoint.load(directory).step == last[-1]["step"] > 0
        assert not (directory / "results.json").exists()
    assert not directories[2].exists()  # queued: cancelled before it started


def test_workbench_run_stops_on_sigterm_with_status_143_and_continues(tmp_path) -> None:
    long_run = {**BASE, "steps": 1_000_000, "metrics_every": 1, "eval_every": 1_000_000}
    spec = {"name": "long", "description": "a run SIGTERM stops", "base": long_run}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-c", "from workbench.cli import app; app()", "run"]
    command += [str(tmp_path / "long.yaml"), "--runs-dir", str(tmp_path / "runs")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (config,) = load_spec(tmp_path / "long.yaml").configs()
    run_dir = tmp_path / "runs" / "long" / config_hash(config)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        log = run_dir / "metrics.jsonl"
        if log.exists() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 143, stderr
    assert "stopped on SIGTERM" in stderr
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert checkpoint.load(run_dir).step == last["step"] > 0

"""The Ray executor on local clusters of 2 CPUs: the same run folders and metrics as the runs one
by one, failures recorded (a lost worker retried), SIGTERM mid-sweep and resume without training
anything twice, nothing left behind. Starting Ray takes 10-30 s on 2 cores: one test starts its
own local cluster (the default path); the others share one cluster of the module."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_experiments import BASE, StubTrain, make_spec, stub_or_fail_at_length_12
from test_termination import WAIT_SECONDS

from workbench import checkpoint
from workbench.experiments import RunsFailed, config_hash, load_spec, run_experiment
from workbench.experiments.executors.ray import MAX_RETRIES, ray_connection

ray = pytest.importorskip("ray")


def cluster_processes(root: str) -> list[int]:
    """Pids of the processes whose command line names ``root`` (a Ray temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if root.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def ray_temp_root() -> Iterator[str]:
    """A short temp folder as Ray's (``RAY_TMPDIR``: its socket paths must stay short) for the
    block; afterwards no process of a cluster in it may be left, and the folder is removed."""
    root = tempfile.mkdtemp(prefix="wb-ray-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = root
    try:
        yield root
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = saved
        deadline = time.monotonic() + 60
        while cluster_processes(root) and time.monotonic() < deadline:
            time.sleep(0.2)  # shut-down processes may take a moment to go
        left = cluster_processes(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")


def test_a_local_cluster_trains_like_the_runs_one_by_one_and_leaves_nothing(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    spec = make_spec(sweep={"task.seq_len": [8, 12]}, seeds=[0])
    handler = signal.getsignal(signal.SIGTERM)
    with ray_temp_root():
        on_ray = run_experiment(
            spec, runs_dir=tmp_path / "ray", progress=False, executor="ray", threads=1
        )
    assert not ray.is_initialized()
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not (tmp_path / "home").exists()  # no token, no config in the user's home
    assert "RAY_AUTH_TOKEN" not in os.environ
    one_by_one = run_experiment(spec, runs_dir=tmp_path / "serial", progress=False, threads=1)
    assert on_ray.n_trained == one_by_one.n_trained == 2
    for a, b in zip(on_ray.runs, one_by_one.runs, strict=True):
        assert a.config_hash == b.config_hash
        assert a.metrics() == b.metrics()  # same seed, same threads: the same numbers
        assert a.run.config() == b.run.config()
    assert on_ray.results == one_by_one.results  # the aggregated results


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local cluster of 2 CPUs that this process is connected to (`run_experiment` uses the
    connection); yields its address for other processes. Its workers import the training
    functions of these tests from this folder (``PYTHONPATH``), as the nodes of a real cluster
    import the package."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved]))
    try:
        with ray_temp_root(), ray_connection(None, num_cpus=2):
            yield ray.get_runtime_context().gcs_address
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved


def test_a_run_that_raises_is_reported_and_the_others_finish(tmp_path, cluster) -> None:
    spec = make_spec(sweep={"task.seq_len": [8, 12, 16]}, seeds=[0])
    with pytest.raises(RunsFailed, match=r"1 of 3 runs failed .*diverged") as raised:
        run_experiment(
            spec,
            runs_dir=tmp_path,
            train_fn=stub_or_fail_at_length_12,
            progress=False,
            executor="ray",
        )
    assert isinstance(raised.value.__cause__, FloatingPointError)
    finished = {
        config["task"]["seq_len"]
        for config in spec.configs()
        if (tmp_path / "toy" / config_hash(config) / "results.json").exists()
    }
    assert finished == {8, 16}


def crash_the_worker_at_length_12(config, out_dir, *, resume, progress):
    """A `TrainFn` whose process dies (a lost worker) at T = 12, on its first attempt only when
    ``config["seed"]`` is 0; every attempt leaves a file."""
    attempts = len(list(out_dir.glob("attempt-*")))
    (out_dir / f"attempt-{attempts}").touch()
    if config["task"]["seq_len"] == 12 and (config["seed"] != 0 or attempts == 0):
        os._exit(1)
    return StubTrain()(config, out_dir, resume=resume, progress=progress)


def test_a_lost_worker_is_retried_a_bounded_number_of_times(tmp_path, cluster) -> None:
    once = make_spec(sweep={"task.seq_len": [8, 12]}, seeds=[0])
    result = run_experiment(
        once,
        runs_dir=tmp_path,
        train_fn=crash_the_worker_at_length_12,
        progress=False,
        executor="ray",
    )
    assert result.n_trained == 2
    retried = tmp_path / "toy" / config_hash(once.configs()[1])
    assert len(list(retried.glob("attempt-*"))) == 2
    always = make_spec(sweep={"task.seq_len": [8, 12]}, seeds=[1])
    with pytest.raises(RunsFailed, match="1 of 2 runs failed") as raised:
        run_experiment(
            always,
            runs_dir=tmp_path,
            train_fn=crash_the_worker_at_length_12,
            progress=False,
            executor="ray",
        )
    assert isinstance(raised.value.__cause__, ray.exceptions.RayError)
    lost = tmp_path / "toy" / config_hash(always.configs()[1])
    assert len(list(lost.glob("attempt-*"))) == 1 + MAX_RETRIES
    assert (tmp_path / "toy" / config_hash(always.configs()[0]) / "results.json").exists()


def _logged_steps(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def test_sigterm_mid_sweep_checkpoints_and_the_same_command_finishes_it(tmp_path, cluster) -> None:
    """Four runs on two slots: the short first one finishes, the next two are in training when
    SIGTERM comes, the last is not started yet. The same command then reuses the finished run,
    continues the stopped ones from their checkpoints and trains the last."""
    logged_every_step = {**BASE, "metrics_every": 1, "eval_every": 1_000_000}
    spec = {"name": "long", "description": "runs SIGTERM stops", "base": logged_every_step}
    spec["sweep"] = {"task.seq_len,steps": [[8, 20], [12, 1500], [16, 1500], [20, 1500]]}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-c", "from workbench.cli import app; app()", "run"]
    command += [str(tmp_path / "long.yaml"), "--runs-dir", str(tmp_path / "runs")]
    command += ["--executor", "ray", "--address", cluster]
    short, *stopped, queued = [
        tmp_path / "runs" / "long" / config_hash(c)
        for c in load_spec(tmp_path / "long.yaml").configs()
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if min(_logged_steps(d) for d in stopped) >= 3:  # both slots are training
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 143, stderr
    assert "stopped on SIGTERM" in stderr and "1 not started" in stderr
    finished_result = (short / "results.json").read_bytes()
    stopped_at = {}
    for directory in stopped:  # in training: checkpointed at the step they stopped at
        last = json.loads((directory / "metrics.jsonl").read_text().splitlines()[-1])
        stopped_at[directory] = checkpoint.load(directory).step
        assert stopped_at[directory] == last["step"] > 0
        assert not (directory / "results.json").exists()
    assert not queued.exists()  # never started
    finished = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert finished.returncode == 0, finished.stderr
    assert "4 runs (3 trained, 1 reused)" in finished.stdout
    assert (short / "results.json").read_bytes() == finished_result  # not trained again
    for directory in [*stopped, queued]:  # from their checkpoints: no step trained twice
        result = json.loads((directory / "results.json").read_text())
        assert result["train"]["resumed_from"] == stopped_at.get(directory)
        steps = [record["step"] for record in map(json.loads, (directory / "metrics.jsonl").open())]
        assert steps == list(range(1501))
    again = run_experiment(tmp_path / "long.yaml", runs_dir=tmp_path / "runs", executor="ray")
    assert again.n_trained == 0

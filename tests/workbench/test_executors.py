"""The executor seam without Ray: options checked before anything trains, Ray's resources and
capacity, the sweep loop on a backend of threads (failures recorded, SIGTERM stops handing runs
out and asks the running ones to stop). `test_ray_executor` runs the Ray executor itself."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pytest
from test_experiments import StubTrain, make_spec
from typer.testing import CliRunner

from workbench.cli import app
from workbench.experiments import RunsFailed, run_experiment
from workbench.experiments.executors.base import run_sweep
from workbench.experiments.executors.ray import (
    RayBackend,
    address_endpoint,
    capacity,
    check_resources,
    probe_address,
)
from workbench.runs import Run
from workbench.termination import Terminated


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"executor": "dask"}, ValueError, "executor must be one of process, ray, got 'dask'"),
        ({"address": "auto"}, ValueError, "address is an option of executor='ray'"),
        ({"gpus_per_run": 1}, ValueError, "gpus_per_run is an option of executor='ray'"),
        ({"cpus_per_run": 2}, ValueError, "cpus_per_run is an option of executor='ray'"),
        ({"executor": "ray", "workers": 2}, ValueError, "workers is an option of executor="),
        ({"executor": "ray", "cpus_per_run": 0}, ValueError, "cpus_per_run must be .* > 0"),
        ({"executor": "ray", "cpus_per_run": 1.5}, ValueError, "cpus_per_run above 1 must be"),
        ({"executor": "ray", "gpus_per_run": -1}, ValueError, "gpus_per_run must be .* >= 0"),
        ({"executor": "ray", "gpus_per_run": float("nan")}, ValueError, "gpus_per_run"),
        ({"executor": "ray", "gpus_per_run": "1"}, TypeError, "gpus_per_run must be a number"),
        ({"executor": "ray", "address": ""}, TypeError, "address must be a non-empty string"),
        ({"executor": "ray", "address": "headnode"}, ValueError, "address must be 'auto', HOST"),
        ({"executor": "ray", "address": "h:99999"}, ValueError, "got 'h:99999'"),
    ],
)
def test_bad_executor_options_name_the_parameter(tmp_path, options, error, message) -> None:
    with pytest.raises(error, match=message):
        run_experiment(make_spec(), runs_dir=tmp_path, train_fn=StubTrain(), **options)
    assert not (tmp_path / "toy").exists()  # nothing trained


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("auto", None),
        ("10.0.0.1:6379", ("10.0.0.1", 6379)),
        ("ray://head.cluster:10001", ("head.cluster", 10001)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_cluster_addresses_are_read_as_host_and_port(address, endpoint) -> None:
    assert address_endpoint(address) == endpoint


@pytest.mark.parametrize("address", ["head", "head:", ":6379", "ray://head", "h:0", "h:x1", "[]:1"])
def test_an_address_without_host_and_port_is_refused_by_name(address) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(address))):
        address_endpoint(address)


def test_an_address_where_nothing_listens_fails_at_once_naming_it() -> None:
    """`ray.init` retries an unreachable address for minutes; the probe asks the port first."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        probe_address(f"127.0.0.1:{open_port}")  # something accepts: no error
        probe_address(f"ray://127.0.0.1:{open_port}")
    with pytest.raises(ConnectionError, match=f"address='127.0.0.1:{open_port}'"):
        probe_address(f"127.0.0.1:{open_port}")  # closed now


def test_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r'extra "ray": pip install -e "\.\[ray\]"'):
        run_experiment(make_spec(), runs_dir=tmp_path, train_fn=StubTrain(), executor="ray")
    result = CliRunner().invoke(app, ["run", "emergence", "--executor", "ray"])
    assert result.exit_code == 2 and '".[ray]"' in result.output
    wrong = CliRunner().invoke(app, ["run", "emergence", "--executor", "slurm"])
    assert wrong.exit_code == 2 and "executor must be one of process, ray" in wrong.output


def test_resources_and_capacity() -> None:
    check_resources(1, 0)
    check_resources(0.5, 0.25)
    check_resources(4, 2)
    assert capacity({"CPU": 2.0}, 1, 0) == 2
    assert capacity({"CPU": 16.0, "GPU": 8.0}, 1, 1) == 8
    assert capacity({"CPU": 16.0, "GPU": 1.0}, 1, 0.25) == 4
    assert capacity({"CPU": 3.0, "GPU": 1.0}, 1, 0.1) == 3  # 1 / 0.1 is 9.999...: 10 fit
    assert capacity({"CPU": 16.0}, 1, 1) == 0


class ThreadBackend:
    """A `Backend` of threads: ``train(config, run, stop)`` trains one run; ``stop`` is a
    threading.Event that `stop` sets for the runs in flight."""

    def __init__(self, train, slots: int) -> None:
        self.pool = ThreadPoolExecutor(slots)
        self.train, self.n_slots = train, slots
        self.stops: dict[Future[None], threading.Event] = {}
        self.submitted: list[str] = []

    def slots(self) -> int:
        return self.n_slots

    def submit(self, config: dict[str, Any], run: Run) -> Future[None]:
        self.submitted.append(run.name)
        stop = threading.Event()
        future = self.pool.submit(self.train, config, run, stop)
        self.stops[future] = stop
        return future

    def wait(self, handles: list[Future[None]], timeout: float) -> list[Future[None]]:
        return list(wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)[0])

    def error(self, handle: Future[None]) -> BaseException | None:
        return handle.exception()

    def stop(self, handles: list[Future[None]]) -> None:
        for handle in handles:
            self.stops[handle].set()


def test_the_sweep_loop_records_failures_and_goes_on(tmp_path) -> None:
    def train(config: dict[str, Any], run: Run, stop: threading.Event) -> None:
        if config["n"] == 1:
            raise FloatingPointError("diverged")

    pending = [({"n": n}, Run(tmp_path / f"run{n}")) for n in range(4)]
    backend = ThreadBackend(train, slots=2)
    with pytest.raises(RunsFailed, match="1 of 4 runs failed") as raised:
        run_sweep(pending, backend, progress=False)
    assert isinstance(raised.value.__cause__, FloatingPointError)
    assert [directory.name for directory, _ in raised.value.failures] == ["run1"]
    assert backend.submitted == ["run0", "run1", "run2", "run3"]


def test_the_sweep_loop_stops_on_sigterm_without_handing_out_more_runs(tmp_path) -> None:
    started = threading.Barrier(3)

    def train(config: dict[str, Any], run: Run, stop: threading.Event) -> None:
        started.wait()
        assert stop.wait(600)  # a run in training stops when asked (only a hang reaches 600 s)
        raise Terminated("checkpointed")

    def terminate_once_both_run() -> None:
        started.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    trigger = threading.Thread(target=terminate_once_both_run)
    trigger.start()
    pending = [({"n": n}, Run(tmp_path / f"run{n}")) for n in range(4)]
    backend = ThreadBackend(train, slots=2)
    with pytest.raises(Terminated, match="2 not started"):
        run_sweep(pending, backend, progress=False)
    trigger.join()
    assert backend.submitted == ["run0", "run1"]


class FakeRay:
    """The part of the ``ray`` module `RayBackend.slots` reads: the cluster's resources."""

    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_a_run_larger_than_the_local_cluster_is_refused_and_waits_on_another(caplog) -> None:
    def backend(local: bool) -> RayBackend:
        ray = FakeRay({"CPU": 2.0})
        return RayBackend(None, ray, 1, 1, local, StubTrain(), resume=True, threads=1)

    assert RayBackend(None, FakeRay({"CPU": 2.0}), 1, 0, True, StubTrain(), True, 1).slots() == 2
    with pytest.raises(ValueError, match=r"gpus_per_run=1, more than the local Ray cluster"):
        backend(local=True).slots()
    remote = backend(local=False)
    assert remote.slots() == remote.slots() == 1  # handed out: a cluster may scale up for it
    assert caplog.text.count("fewer resources than") == 1

"""The Ray executor: every run a Ray task with the resources it asks for (``cpus_per_run``,
``gpus_per_run``), on an existing cluster (``address``) or on a local one started for the sweep.

Ray is the optional extra ``ray`` (``pip install -e ".[ray]"``), imported only here and only when
this executor runs. The run folders stay the only cache and the only channel for results: a task
trains into its folder and returns nothing, so on several nodes the runs folder must be a shared
filesystem mounted at the same path everywhere (and the package installed on every node).

A local cluster (no ``address``) starts without the dashboard and is shut down after the sweep;
it uses token authentication (Ray's default for local clusters since 2.59: its processes listen on
every interface) with a token held in this process's environment for the cluster's lifetime, so
nothing is written to ``~/.ray`` unless the user already keeps a token or set ``RAY_AUTH_*``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.experiments.executors.base import TrainFn, run_in_worker, run_sweep
from workbench.runs import Run

logger = logging.getLogger(__name__)

EXTRA = 'the optional extra "ray": pip install -e ".[ray]" (or pip install "ray>=2.52")'
MAX_RETRIES = 2
"""Times a run is started again after an infrastructure failure (its worker process or node died);
an error raised by the run itself is never retried. A retried run resumes from its checkpoint
(with ``resume=True``, the default)."""
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_LOCAL_TOKEN = secrets.token_hex(32)
"""The token of the local clusters this process starts (one per process: Ray's token loader in
the driver keeps the first one it reads)."""


def import_ray() -> Any:
    """The ``ray`` module; without it, ``ModuleNotFoundError`` naming the extra to install."""
    try:
        import ray
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"executor='ray' needs {EXTRA}") from error
    return ray


def check_resources(cpus_per_run: Any, gpus_per_run: Any) -> None:
    """``ValueError`` / ``TypeError`` naming the parameter unless both are resource amounts Ray
    takes: a number > 0 CPUs and >= 0 GPUs, fractions only below 1 (0.25: four runs share one)."""
    for name, value, bound in (
        ("cpus_per_run", cpus_per_run, "> 0"),
        ("gpus_per_run", gpus_per_run, ">= 0"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number {bound}, got {value!r}")
        if not math.isfinite(value) or value < 0 or (bound == "> 0" and value == 0):
            raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"{name} above 1 must be a whole number (Ray's rule), got {value!r}")


def capacity(resources: dict[str, float], cpus_per_run: float, gpus_per_run: float) -> int:
    """How many runs of ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs fit in ``resources`` (a
    cluster's totals, as ``ray.cluster_resources()`` gives them)."""
    fits = [resources.get("CPU", 0.0) / cpus_per_run]
    if gpus_per_run > 0:
        fits.append(resources.get("GPU", 0.0) / gpus_per_run)
    return math.floor(min(fits) + 1e-9)


@contextlib.contextmanager
def _scoped_environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated by ``values`` inside the block (restored after)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local_token_environment() -> dict[str, str]:
    """The variables that give a new local cluster token authentication without a token file:
    none when the user configured authentication (``RAY_AUTH_*`` set, or ``~/.ray/auth_token``)."""
    if any(name in os.environ for name in AUTH_VARIABLES):
        return {}
    if (Path.home() / ".ray" / "auth_token").exists():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _LOCAL_TOKEN}


def _local_code_environment() -> dict[str, str]:
    """``PYTHONPATH`` led by the folder this package is imported from, so that the workers of a
    local cluster (started with this environment) run the same code as this process, wherever
    their working folder is (a source checkout need not be installed)."""
    root = str(Path(__file__).resolve().parents[3])
    return {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _refresh_ray_config(ray: Any) -> None:
    """Make the driver read ``RAY_AUTH_*`` again: Ray reads its configuration when imported, and
    does the same itself when it turns token authentication on for a local cluster."""
    ray._raylet.Config.initialize("")


PROBE_SECONDS = 5.0
"""How long `probe_address` waits for a cluster's port to accept a connection."""


def address_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster address (``HOST:PORT``, ``ray://HOST:PORT``, ``[IPv6]:PORT``);
    None for ``"auto"``. ``ValueError`` naming ``address`` for anything else."""
    if address == "auto":
        return None
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def probe_address(address: str) -> None:
    """``ConnectionError`` naming ``address`` at once when nothing accepts connections at its
    ``host:port`` (``ray.init`` would retry for minutes); ``"auto"`` is left to Ray, which
    fails at once when no cluster runs here."""
    endpoint = address_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        socket.create_connection(endpoint, timeout=PROBE_SECONDS).close()
    except OSError as error:
        raise ConnectionError(
            f"executor='ray' found no Ray cluster at address={address!r}: nothing accepted a "
            f"connection at {host}:{port} within {PROBE_SECONDS:g} s ({error})"
        ) from None


@contextlib.contextmanager
def ray_connection(address: str | None, num_cpus: int | None = None) -> Iterator[bool]:
    """This process connected to Ray for the block; yields whether the cluster is local (started
    here). ``address``: a cluster's address (``"auto"``: the one ``ray start`` runs on this
    machine; ``"ray://host:10001"``: through Ray Client); None: ``RAY_ADDRESS`` when set, else a
    new local cluster (``num_cpus``: its CPUs; None: every core), shut down after the block. When
    this process is already connected (``ray.init`` called by the user), that connection is used
    and left open. The SIGTERM handler that ``ray.init`` installs is removed afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = address is None
    if not local:
        probe_address(address)
    environment = {**_local_token_environment(), **_local_code_environment()} if local else {}
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with _scoped_environment(environment):
            if "RAY_AUTH_MODE" in environment:
                _refresh_ray_config(ray)
            try:
                ray.init(
                    "local" if local else address,
                    num_cpus=num_cpus if local else None,
                    include_dashboard=False if local else None,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            except ConnectionError as error:
                raise ConnectionError(
                    f"executor='ray' found no Ray cluster at address={address!r}: {error}"
                ) from error
            try:
                yield local
            finally:
                ray.shutdown()
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if "RAY_AUTH_MODE" in environment:
            _refresh_ray_config(ray)  # the environment as it was again


@dataclass
class RayBackend:
    """The `Backend` of Ray tasks (one run each)."""

    remote: Any
    ray: Any
    cpus_per_run: float
    gpus_per_run: float
    local: bool
    train_fn: TrainFn
    resume: bool | str
    threads: int
    warned: bool = False

    def slots(self) -> int:
        resources = self.ray.cluster_resources()
        fits = capacity(resources, self.cpus_per_run, self.gpus_per_run)
        if fits == 0 and self.local:
            raise ValueError(
                f"a run asks for cpus_per_run={self.cpus_per_run}, gpus_per_run="
                f"{self.gpus_per_run}, more than the local Ray cluster has "
                f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)"
            )
        if fits == 0 and not self.warned:  # a cluster that scales up reports them later
            self.warned = True
            logger.warning(
                "the Ray cluster has fewer resources than cpus_per_run=%s, gpus_per_run=%s "
                "(%s): one run is handed out and waits for a node that has them",
                self.cpus_per_run,
                self.gpus_per_run,
                resources,
            )
        return max(1, fits)

    def submit(self, config: dict[str, Any], run: Run) -> Any:
        run = Run(run.path.absolute())  # the workers' working folder may differ
        return self.remote.remote(
            config, run, self.train_fn, resume=self.resume, threads=self.threads
        )

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:
            ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def error(self, handle: Any) -> BaseException | None:
        try:
            self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as error:  # raised by the run: its own error
            return error.cause if isinstance(error.cause, BaseException) else error
        except self.ray.exceptions.RayError as error:  # a lost worker or node, after retries
            return error
        return None

    def stop(self, handles: list[Any]) -> None:
        for handle in handles:  # a running task gets SIGINT's handler: a stop request
            self.ray.cancel(handle, force=False)


def train_on_ray(
    pending: list[tuple[dict[str, Any], Run]],
    train_fn: TrainFn,
    *,
    address: str | None,
    cpus_per_run: float,
    gpus_per_run: float,
    progress: bool,
    resume: bool | str = True,
    threads: int = 1,
    num_cpus: int | None = None,
) -> None:
    """Train ``(config, run)`` pairs as Ray tasks of ``cpus_per_run`` CPUs and ``gpus_per_run``
    GPUs (``threads`` torch threads each) through `run_sweep`, as many at once as the cluster
    holds: one progress bar, failed runs recorded (a lost worker retried `MAX_RETRIES` times),
    SIGTERM or Ctrl-C cancel the tasks, which checkpoint, and raise `Terminated`.
    ``address`` / ``num_cpus``: see `ray_connection`."""
    check_resources(cpus_per_run, gpus_per_run)
    ray = import_ray()
    with ray_connection(address, num_cpus) as local:
        remote = ray.remote(run_in_worker).options(
            num_cpus=cpus_per_run,
            num_gpus=gpus_per_run,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )
        backend = RayBackend(
            remote, ray, cpus_per_run, gpus_per_run, local, train_fn, resume, threads
        )
        run_sweep(pending, backend, progress=progress)

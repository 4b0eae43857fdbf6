"""One sweep on several GPUs through Ray against the same sweep on one GPU: wall time, runs per
hour, GPU utilisation and memory over time, a kill mid-way and a restart, and the results of the
two compared run by run.

Each phase is ``python -m workbench run NAME [--quick] [--where ...] --executor EXECUTOR`` in a
process of its own, into a runs folder of its own:

1. **reference**: the sweep with one GPU visible (``CUDA_VISIBLE_DEVICES=0``; none with
   ``--gpus 0``);
2. **spread**: the sweep with ``--gpus`` GPUs visible, stopped by SIGTERM once
   ``--kill-after-runs`` runs have finished (default: half of them; the command checkpoints the
   runs in training and exits 143), then the same command again until it finishes. What had
   finished before the kill must not train again (its ``results.json`` and ``metrics.jsonl``
   are unchanged, byte for byte) and no run may be missing at the end. The spread phase's time
   includes the restart (a second start of the command and of Ray); ``--kill-after-runs 0``
   measures it without the kill.

Then the two runs folders are compared: the same config hashes, and per run the final metrics
(bitwise equal, or the largest difference). ``nvidia-smi`` is sampled every second during each
phase (utilisation and memory per GPU). Everything goes to one JSON file with the device,
versions and date.

    python bench/ray_sweep.py emergence --where task.seq_len=32,64 --gpus 2 \\
        --gpus-per-run 0.25 --cpus-per-run 2 \\
        --out bench/results/ray_sweep_h200.json

``--executor process --workers N`` runs the same procedure without Ray (how the tests run it).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench.io import atomic_write_json, write_figure
from workbench.runs import RunStore

SIGTERM_EXIT = 143
"""Exit status of ``workbench run`` stopped by SIGTERM."""
SAMPLE_QUERY = "index,utilization.gpu,memory.used"


@contextmanager
def gpu_samples(period_s: float = 1.0) -> Iterator[list[dict[str, float]]]:
    """Samples of every GPU's utilisation (%) and used memory (MiB) while the block runs, each
    ``{"t": seconds since the start, "gpu", "utilization", "memory_mib"}``; none where
    ``nvidia-smi`` is missing."""
    samples: list[dict[str, float]] = []
    if shutil.which("nvidia-smi") is None:
        yield samples
        return
    start, stop = time.monotonic(), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            command = ["nvidia-smi", f"--query-gpu={SAMPLE_QUERY}", "--format=csv,noheader,nounits"]
            found = subprocess.run(command, capture_output=True, text=True, check=False)
            samples.extend(parse_samples(found.stdout, time.monotonic() - start))
            stop.wait(period_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def parse_samples(text: str, t: float) -> list[dict[str, float]]:
    """Rows ``index, utilization, memory`` of ``nvidia-smi --format=csv,noheader,nounits``."""
    rows = []
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3 and all(field.replace(".", "", 1).isdigit() for field in fields):
            gpu, utilization, memory = (float(field) for field in fields)
            rows.append(
                {
                    "t": round(t, 2),
                    "gpu": int(gpu),
                    "utilization": utilization,
                    "memory_mib": memory,
                }
            )
    return rows


def sweep_command(args: argparse.Namespace, runs_dir: Path) -> list[str]:
    """``python -m workbench run ...`` for ``args`` into ``runs_dir``."""
    command = [
        sys.executable,
        "-m",
        "workbench",
        "run",
        args.experiment,
        "--runs-dir",
        str(runs_dir),
    ]
    command += ["--quick"] if args.quick else []
    for where in args.where:
        command += ["--where", where]
    command += ["--executor", args.executor]
    if args.executor == "ray":
        command += [
            "--gpus-per-run",
            str(args.gpus_per_run),
            "--cpus-per-run",
            str(args.cpus_per_run),
        ]
    else:
        command += ["--workers", str(args.workers)]
    return command


def run_phase(
    command: list[str],
    env: dict[str, str],
    log: Path,
    kill_when: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run ``command`` (output appended to ``log``); with ``kill_when``, send SIGTERM as soon as
    it returns True (polled 5 times a second). Returns the exit code, the wall seconds, whether
    it was stopped, and the log's last lines when it failed."""
    start = time.perf_counter()
    killed = False
    with log.open("a", encoding="utf-8") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        while process.poll() is None:
            if kill_when is not None and not killed and kill_when():
                process.send_signal(signal.SIGTERM)
                killed = True
            time.sleep(0.2)
    phase: dict[str, Any] = {
        "exit": process.returncode,
        "seconds": time.perf_counter() - start,
        "killed": killed,
    }
    if process.returncode not in (0, SIGTERM_EXIT):
        phase["log_tail"] = log.read_text(encoding="utf-8").splitlines()[-30:]
    return phase


def finished_runs(runs_dir: Path, experiment: str) -> dict[str, dict[str, Any]]:
    """Per finished run (config hash): the sha256 of its ``results.json`` and ``metrics.jsonl``
    and its final metrics."""
    found = {}
    for run in RunStore(runs_dir).runs(experiment):
        if run.is_finished():
            digests = {
                name: hashlib.sha256((run.path / name).read_bytes()).hexdigest()
                for name in ("results.json", "metrics.jsonl")
            }
            found[run.name] = {**digests, "metrics": run.result().get("train", {})}
    return found


def compare_results(
    reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Same config hashes, and per shared run whether the numeric final metrics are bitwise equal
    and the largest absolute difference."""
    shared = sorted(set(reference) & set(other))
    largest, equal = 0.0, []
    for name in shared:
        ours, theirs = reference[name]["metrics"], other[name]["metrics"]
        keys = {key for key in ours.keys() & theirs.keys() if _number(ours[key])}
        differences = [abs(ours[key] - theirs[key]) for key in keys if _number(theirs[key])]
        largest = max([largest, *[d for d in differences if not math.isnan(d)]])
        equal.append(all(ours[key] == theirs[key] for key in keys))
    return {
        "same_hashes": set(reference) == set(other),
        "only_in_reference": sorted(set(reference) - set(other)),
        "only_in_other": sorted(set(other) - set(reference)),
        "runs_compared": len(shared),
        "runs_bitwise_equal": sum(equal),
        "max_abs_metric_difference": largest,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def kept_through_restart(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Runs finished before the kill: whether each is still there with the same files (not
    trained again, not lost)."""
    retrained = [name for name in before if name in after and after[name] != before[name]]
    lost = [name for name in before if name not in after]
    return {"finished_before_kill": len(before), "trained_again": retrained, "lost": lost}


def samples_figure(phases: dict[str, Any]) -> Any:
    """Utilisation (top) and used memory (bottom) of each GPU over each phase's time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=2, cols=1, shared_xaxes=True, subplot_titles=("GPU utilisation", "GPU memory used")
    )
    for phase, dash in (("reference", "dot"), ("spread", "solid")):
        samples = phases[phase]["gpu_samples"]
        for gpu in sorted({sample["gpu"] for sample in samples}):
            mine = [sample for sample in samples if sample["gpu"] == gpu]
            times = [sample["t"] for sample in mine]
            for row, key in ((1, "utilization"), (2, "memory_mib")):
                figure.add_trace(
                    go.Scatter(
                        x=times,
                        y=[sample[key] for sample in mine],
                        mode="lines",
                        name=f"{phase}, GPU {gpu}",
                        legendgroup=f"{phase}{gpu}",
                        showlegend=row == 1,
                        line={"dash": dash},
                    ),
                    row=row,
                    col=1,
                )
    figure.update_yaxes(title_text="%", range=[0, 105], row=1, col=1)
    figure.update_yaxes(title_text="MiB", rangemode="tozero", row=2, col=1)
    figure.update_xaxes(title_text="seconds since the phase started", row=2, col=1)
    figure.update_layout(title="one GPU (reference) against the spread sweep")
    return figure


def device_facts(gpus: int) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "gpus": [
            torch.cuda.get_device_name(i) for i in range(min(gpus, torch.cuda.device_count()))
        ],
    }
    for package in ("triton", "ray"):
        try:
            facts[package] = __import__(package).__version__
        except ImportError:
            facts[package] = None
    return facts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="experiment name or spec path (as workbench run)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--where", action="append", default=[], help="as workbench run --where")
    parser.add_argument("--executor", choices=("ray", "process"), default="ray")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs of the spread phase (0: CPU)")
    parser.add_argument("--gpus-per-run", type=float, default=0.25)
    parser.add_argument("--cpus-per-run", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2, help="--executor process only")
    parser.add_argument(
        "--kill-after-runs",
        type=int,
        default=None,
        help="finished runs after which the spread phase is stopped once "
        "(default: half of the reference's runs; 0: never)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the two runs folders go (default: a temporary folder)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.gpus < 0 or (args.kill_after_runs or 0) < 0:
        parser.error("--gpus and --kill-after-runs must be >= 0")
    experiment = (
        Path(args.experiment).stem if args.experiment.endswith(".yaml") else args.experiment
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        reference_env = {**env, "CUDA_VISIBLE_DEVICES": "0" if args.gpus else ""}
        spread_env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(args.gpus)))}
        phases: dict[str, Any] = {}
        with gpu_samples() as samples:
            command = sweep_command(args, work / "reference")
            phases["reference"] = run_phase(command, reference_env, work / "reference.log")
        phases["reference"]["gpu_samples"] = samples
        reference = finished_runs(work / "reference", experiment)
        kill_after = len(reference) // 2 if args.kill_after_runs is None else args.kill_after_runs

        def halfway() -> bool:
            done = RunStore(work / "spread").runs(experiment)
            return sum(run.is_finished() for run in done) >= kill_after

        with gpu_samples() as samples:
            command = sweep_command(args, work / "spread")
            first = run_phase(
                command, spread_env, work / "spread.log", halfway if kill_after else None
            )
            before = finished_runs(work / "spread", experiment)
            second = (
                run_phase(command, spread_env, work / "spread.log") if first["killed"] else None
            )
        spread = finished_runs(work / "spread", experiment)
        seconds = first["seconds"] + (second["seconds"] if second else 0.0)
        phases["spread"] = {
            "first": first,
            "restart": second,
            "seconds": seconds,
            "restart_check": kept_through_restart(before, spread) if first["killed"] else None,
            "gpu_samples": samples,
        }
    result = {
        "command": sweep_command(args, Path("RUNS")),
        "device": device_facts(args.gpus),
        "runs": len(reference),
        "phases": phases,
        "runs_per_hour": {
            "reference": 3600 * len(reference) / phases["reference"]["seconds"],
            "spread": 3600 * len(spread) / seconds,
        },
        "speedup": phases["reference"]["seconds"] / seconds,
        "comparison": compare_results(reference, spread),
    }
    atomic_write_json(args.out, result)
    write_figure(samples_figure(phases), args.out.with_suffix(".html"))
    summary = {key: result[key] for key in ("runs", "runs_per_hour", "speedup", "comparison")}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()

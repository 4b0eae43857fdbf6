"""Training throughput of an experiment's runs against the number of worker processes.

For each worker count W it trains W copies of one config of the experiment (seeds 0..W-1, no
early stop, the config's own evaluations and logging) with `run_experiment(..., workers=W)`, once
for ``--steps`` and once for ``--long-factor`` times as many, and reports the aggregate
optimisation steps per second of the steady state: the extra steps of all workers over the
difference of the two wall times, so the start (processes, imports, model building) and the final
evaluation and checkpoint cancel out. The start of 16 processes varies by seconds from one sweep
to the next, so the pair is repeated (``--repeats``) and the median reported with the range; the
long run should outlast the start's spread many times (with a factor of 2 and 200 steps, two
repeats on one H100 gave 281 and 488 steps/s). It says how many workers a machine should use for
the full sweeps (`workbench run NAME --workers W`).

    python bench/train_throughput.py emergence --index -1 --workers 1 4 8 --steps 300 \\
        --out bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from workbench.experiments import ExperimentSpec, load_spec, run_experiment
from workbench.experiments.spec import SEED_KEY
from workbench.io import atomic_write_json


def sweep_seconds(spec: ExperimentSpec, config: dict, workers: int, steps: int) -> float:
    """Wall seconds of training ``workers`` seeds of ``config`` for ``steps`` steps side by side
    (checkpoints only at the end)."""
    config = dict(config, steps=steps, checkpoint_every=steps, early_stop=None)
    copies = dataclasses.replace(spec, base=config, sweep={}, seeds=tuple(range(workers)))
    with tempfile.TemporaryDirectory() as runs_dir:
        start = time.perf_counter()
        run_experiment(copies, runs_dir=runs_dir, workers=workers, progress=False)
        return time.perf_counter() - start


def throughput(
    spec: ExperimentSpec,
    config: dict,
    workers: int,
    steps: int,
    *,
    long_factor: int = 4,
    repeats: int = 3,
) -> dict:
    """Steady-state aggregate steps/s of ``workers`` runs of ``config`` (a config of ``spec``
    without its seed) in parallel, from ``repeats`` pairs of runs of ``steps`` and ``long_factor *
    steps`` steps: the median and range over the pairs, each pair's wall seconds, and the start-up
    they exclude (median)."""
    pairs, rates, startups = [], [], []
    extra = (long_factor - 1) * steps
    for _ in range(repeats):
        short = sweep_seconds(spec, config, workers, steps)
        long = sweep_seconds(spec, config, workers, long_factor * steps)
        pairs.append([short, long])
        rates.append(workers * extra / (long - short))
        startups.append(short - steps * (long - short) / extra)
    return {
        "workers": workers,
        "wall_seconds": pairs,
        "steps_per_second": statistics.median(rates),
        "steps_per_second_range": [min(rates), max(rates)],
        "startup_seconds": statistics.median(startups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="spec name or YAML path")
    parser.add_argument("--index", type=int, default=-1, help="which config of the sweep")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=300, help="steps of the short run")
    parser.add_argument(
        "--long-factor", type=int, default=4, help="the long run's steps over the short run's"
    )
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per worker count")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.long_factor < 2:
        parser.error(f"--long-factor must be at least 2, got {args.long_factor}")
    spec = load_spec(args.experiment)
    config = spec.configs()[args.index]
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "experiment": args.experiment,
        "config": config,
        "steps": args.steps,
        "long_factor": args.long_factor,
        "repeats": args.repeats,
        "host_cpus": os.cpu_count(),
        "rows": [],
    }
    seedless = {key: value for key, value in config.items() if key != SEED_KEY}
    sweep_seconds(spec, seedless, 1, 1)  # imports and caches, before anything is timed
    for workers in args.workers:
        row = throughput(
            spec,
            seedless,
            workers,
            args.steps,
            long_factor=args.long_factor,
            repeats=args.repeats,
        )
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()

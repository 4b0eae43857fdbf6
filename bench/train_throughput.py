"""Training throughput of an experiment's runs against the number of worker processes.

For each worker count W it trains W copies of one config of the experiment (seeds 0..W-1, no
early stop, the config's own evaluations and logging) with `run_experiment(..., workers=W)`, once
for ``--steps`` and once for twice as many steps, and reports the aggregate optimisation steps per
second of the steady state: ``W * steps`` over the difference of the two wall times, so the start
(processes, imports, model building) and the final evaluation and checkpoint cancel out. It says
how many workers a machine should use for the full sweeps (`workbench run NAME --workers W`).

    python bench/train_throughput.py emergence --index -1 --workers 1 4 8 --steps 300 \\
        --out bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
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


def throughput(spec: ExperimentSpec, config: dict, workers: int, steps: int) -> dict:
    """Steady-state aggregate steps/s of ``workers`` runs of ``config`` (a config of ``spec``
    without its seed) in parallel, from runs of ``steps`` and ``2 * steps`` steps, and the
    start-up it excludes."""
    short = sweep_seconds(spec, config, workers, steps)
    long = sweep_seconds(spec, config, workers, 2 * steps)
    return {
        "workers": workers,
        "wall_seconds": [short, long],
        "steps_per_second": workers * steps / (long - short),
        "startup_seconds": 2 * short - long,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="spec name or YAML path")
    parser.add_argument("--index", type=int, default=-1, help="which config of the sweep")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    spec = load_spec(args.experiment)
    config = spec.configs()[args.index]
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "experiment": args.experiment,
        "config": config,
        "steps": args.steps,
        "rows": [],
    }
    seedless = {key: value for key, value in config.items() if key != SEED_KEY}
    sweep_seconds(spec, seedless, 1, 1)  # imports and caches, before anything is timed
    for workers in args.workers:
        row = throughput(spec, seedless, workers, args.steps)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()

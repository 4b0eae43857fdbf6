"""Training throughput of an experiment's runs against the number of worker processes.

For each worker count W it trains W copies of one config of the experiment (seeds 0..W-1, the
first ``--steps`` steps, no early stop) with `run_experiment(..., workers=W)` and reports the
aggregate optimisation steps per second: how many workers a machine should use for the full
sweeps (`workbench run NAME --workers W`).

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

from workbench.experiments import load_spec, run_experiment
from workbench.experiments.spec import SEED_KEY
from workbench.io import atomic_write_json


def throughput(name: str, index: int, workers: int, steps: int) -> dict:
    """Aggregate steps/s of ``workers`` runs of config ``index`` of spec ``name`` in parallel."""
    spec = load_spec(name)
    config = {key: value for key, value in spec.configs()[index].items() if key != SEED_KEY}
    config.update(steps=steps, checkpoint_every=steps, early_stop=None)
    copies = dataclasses.replace(spec, base=config, sweep={}, seeds=tuple(range(workers)))
    with tempfile.TemporaryDirectory() as runs_dir:
        start = time.perf_counter()
        run_experiment(copies, runs_dir=runs_dir, workers=workers, progress=False)
        wall = time.perf_counter() - start
    return {"workers": workers, "wall_seconds": wall, "steps_per_second": workers * steps / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="spec name or YAML path")
    parser.add_argument("--index", type=int, default=-1, help="which config of the sweep")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    config = load_spec(args.experiment).configs()[args.index]
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "experiment": args.experiment,
        "config": config,
        "steps": args.steps,
        "rows": [],
    }
    for workers in args.workers:
        row = throughput(args.experiment, args.index, workers, args.steps)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()

"""Operations and host read-backs of one training step, per config of an experiment.

For each config (of the spec, or of its ``--where`` slice) it trains ``--steps`` and twice as many
steps with evaluations and checkpoints pushed past the end, counting with
`workbench.devtools.op_counts.OpCounter`, and reports the difference per step: start-up, the
final evaluation and the checkpoints cancel out. On a GPU each operation is a kernel launch and
each read-back a sync, so this says on any machine (a CPU too) what limits the small models'
step rate there, and where the syncs come from. A GPU launches somewhat fewer: dropout is one
fused kernel there (four operations here), and the optimiser's update and the gradient clipping
take torch's multi-tensor kernels (a few launches, one operation per parameter here).

    python bench/train_step_ops.py semantic_focus --where task.name=even_pairs --where seed=0 \\
        --out bench/results/train_step_ops_semantic_focus_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from workbench.cli import parse_where
from workbench.devtools.op_counts import OpCounter
from workbench.experiments import load_spec
from workbench.experiments.analyses import method_label
from workbench.io import atomic_write_json
from workbench.train import TrainConfig, train


def counted_run(config: TrainConfig, steps: int) -> OpCounter:
    """The counts of training ``config`` for ``steps`` steps (one evaluation, at the end)."""
    late = 10 * steps
    short = config.replace(
        steps=steps, eval_every=late, metrics_every=late, checkpoint_every=late, early_stop=None
    )
    with tempfile.TemporaryDirectory() as folder, OpCounter() as counted:
        train(short, Path(folder) / "run", progress=False)
    return counted


def per_step(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """Operations and read-backs per training step of the run ``config`` (the difference of a
    run of ``2 * steps`` and one of ``steps``, divided by ``steps``), read-backs by call site."""
    train_config = TrainConfig.from_dict(config)
    one, two = counted_run(train_config, steps), counted_run(train_config, 2 * steps)
    sites = two.read_back_sites.copy()
    sites.subtract(one.read_back_sites)
    return {
        "method": method_label(config),
        "operations_per_step": (two.operations - one.operations) / steps,
        "read_backs_per_step": (two.read_backs - one.read_backs) / steps,
        "read_back_sites_per_step": {
            site: count / steps for site, count in sites.most_common() if count > 0
        },
    }


def _commit() -> str | None:
    """The checkout's commit (None outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="spec name or YAML path")
    parser.add_argument("--where", action="append", default=[], help="as `workbench run --where`")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_step_ops.json"))
    args = parser.parse_args()
    spec = load_spec(args.experiment).restricted(parse_where(args.where))
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "device": "cpu (counts, not timings; a GPU fuses dropout and the optimiser's per-parameter updates)",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "experiment": args.experiment,
        "where": args.where,
        "steps": args.steps,
        "rows": [],
    }
    for config in spec.configs():
        row = {"config": config, **per_step(config, args.steps)}
        results["rows"].append(row)
        summary = {key: value for key, value in row.items() if key != "config"}
        print(json.dumps(summary), flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()

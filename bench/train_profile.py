"""Where the time of one training run goes: plain steps against steps that also evaluate, and the
operators that take the most time (torch.profiler).

It trains config ``--index`` of an experiment (no early stop) for ``--warmup`` steps (compilation,
autotuning), then ``--steps`` more with the profiler on, synchronising the device after every step
so that each step's time is its own.

    python bench/train_profile.py emergence --index 0 --steps 200 --out bench/results/train_profile.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from workbench.experiments import load_spec
from workbench.io import atomic_write_json
from workbench.train import TrainConfig, train

TOP_OPERATORS = 25


def profile_run(config: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    """Step times (ms) split by whether the step evaluated, and the top operators by self time."""
    train_config = TrainConfig.from_dict(
        {**config, "steps": warmup + steps, "checkpoint_every": warmup + steps, "early_stop": None}
    )
    cuda = train_config.torch_device().type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiler = profile(activities=activities)
    plain, evaluating = [], []
    last = time.perf_counter()

    def on_step(step: int, record: dict[str, Any] | None) -> None:
        nonlocal last
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == warmup:
            profiler.start()
        elif step > warmup:
            (evaluating if record and "eval_loss" in record else plain).append((now - last) * 1e3)
        last = now

    with tempfile.TemporaryDirectory() as out_dir:
        train(train_config, out_dir, resume=False, progress=False, callback=on_step)
    profiler.stop()
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda event: -getattr(event, sort_key))
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "plain_step_ms_median": statistics.median(plain) if plain else None,
        "evaluating_step_ms_median": statistics.median(evaluating) if evaluating else None,
        "plain_steps": len(plain),
        "evaluating_steps": len(evaluating),
        "eval_every": train_config.eval_every,
        "top_operators": [
            {
                "name": event.key,
                "count": event.count,
                "self_cpu_ms": event.self_cpu_time_total / 1e3,
                "self_device_ms": getattr(event, "self_device_time_total", 0.0) / 1e3,
            }
            for event in events[:TOP_OPERATORS]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="spec name or YAML path")
    parser.add_argument("--index", type=int, default=0, help="which config of the sweep")
    parser.add_argument("--quick", action="store_true", help="the spec's quick variant")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_profile.json"))
    args = parser.parse_args()
    spec = load_spec(args.experiment)
    spec = spec.quick_variant() if args.quick else spec
    config = spec.configs()[args.index]
    result = {
        "experiment": args.experiment,
        "quick": args.quick,
        "config": config,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        **profile_run(config, args.warmup, args.steps),
    }
    atomic_write_json(args.out, result)
    print(
        f"plain step {result['plain_step_ms_median']:.2f} ms, step with evaluation "
        f"{result['evaluating_step_ms_median']:.2f} ms (every {result['eval_every']} steps)"
    )
    for row in result["top_operators"][:10]:
        print(
            f"{row['self_device_ms']:9.1f} ms device {row['self_cpu_ms']:9.1f} ms cpu  {row['name']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

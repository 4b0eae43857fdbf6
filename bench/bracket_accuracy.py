"""Accuracy of the bracket-mode top-p budgets against the float64 oracle, on the CPU (Triton's
interpreter, fp32 inputs): fraction of (row, p) whose interval closed (exact), containment of the
exact budget, and the estimate's relative error (p50 / p99 / max) per mass p, on i.i.d. Gaussian
q, k and on the benchmark's structured inputs (`bench/attention.py`, `realistic_qkv`).

    PYTHONPATH=. python bench/bracket_accuracy.py --n 2048 --out bench/results/bracket_accuracy_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import triton

from kernels import reference
from kernels.triton import row_stats
from workbench.io import atomic_write_json

PS = (0.5, 0.9, 0.95, 0.99)


def inputs(kind: str, n: int, heads: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        return torch.randn(1, heads, n, d, generator=generator)

    q, k = draw(), draw()
    if kind == "structured":  # as bench/attention.py's realistic_qkv
        drift = torch.cumsum(draw() * 0.05, dim=2)
        q, k = q + drift, k + drift
        k[:, :, :4] *= 4.0
    return q, k


def measure(kind: str, n: int, heads: int, d: int, seed: int) -> dict:
    q, k = inputs(kind, n, heads, d, seed)
    out = row_stats.row_stats(q, k, causal=True, ps=PS, budgets="bracket")
    exact = reference.row_stats(q, k, causal=True, ps=PS, compute_dtype=torch.float64).top_p_budget
    low, high, estimate = out.top_p_budget_low, out.top_p_budget_high, out.top_p_budget
    error = (estimate - exact).abs().double() / exact.clamp(min=1).double()
    result = {"contains": bool(((low <= exact) & (exact <= high)).all())}
    for i, p in enumerate(PS):
        e = error[..., i].flatten()
        result[str(p)] = {
            "closed": ((low == high)[..., i]).double().mean().item(),
            "estimate_exact": (estimate == exact)[..., i].double().mean().item(),
            "rel_error_p50": e.quantile(0.5).item(),
            "rel_error_p99": e.quantile(0.99).item(),
            "rel_error_max": e.max().item(),
            "interval_width_over_budget_p99": (
                ((high - low)[..., i].double() / exact[..., i].clamp(min=1)).quantile(0.99).item()
            ),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--out", default="bench/results/bracket_accuracy_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "n": args.n,
        "heads": args.heads,
        "d_head": args.d_head,
        "inputs": {},
    }
    for kind in ("gaussian", "structured"):
        results["inputs"][kind] = measure(kind, args.n, args.heads, args.d_head, seed=0)
        row = results["inputs"][kind]
        print(kind, "contains:", row["contains"])
        for p in PS:
            r = row[str(p)]
            print(
                f"  p={p}: closed {r['closed']:.3f}, estimate exact {r['estimate_exact']:.3f}, "
                f"rel error p50 {r['rel_error_p50']:.4f} p99 {r['rel_error_p99']:.4f} "
                f"max {r['rel_error_max']:.4f}"
            )
    atomic_write_json(args.out, results)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

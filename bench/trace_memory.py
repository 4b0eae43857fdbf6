"""Tracer memory and time on long inputs: streaming row statistics vs TransformerLens patterns.

A random-weights HookedTransformer (GPT-2-small sized attention: 12 heads of 64) traced with
``TraceConfig(stats=True, attention="kernels", impl="triton")`` at each length, recording peak GPU
memory and time, next to TransformerLens's ``run_with_cache`` of ``hook_pattern`` at the lengths it
survives (it materialises N x N per layer).

    python bench/trace_memory.py --lengths 4096 8192 16384 32768 --out bench/results/trace_memory.json
    python bench/trace_memory.py --ps --out bench/results/trace_memory_no_budgets.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import time
from pathlib import Path

import torch

from workbench.io import atomic_write_json
from workbench.trace import TraceConfig, trace


def build_model(n_ctx: int, n_layers: int, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=768, n_heads=12, d_head=64, n_ctx=n_ctx, d_vocab=1000,
        act_fn="gelu", positional_embedding_type="rotary", device=device, dtype=torch.bfloat16,
        seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def measure(function) -> dict:
    """Peak extra memory (bytes) and wall time (s) of ``function()`` on the GPU, or the error."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            function()
        torch.cuda.synchronize()
    except torch.OutOfMemoryError as error:
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}
    return {
        "seconds": time.perf_counter() - start,
        "peak_extra_bytes": torch.cuda.max_memory_allocated() - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--ps", type=float, nargs="*", default=None, help="top-p masses (none: skip the budgets)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/trace_memory.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    model = build_model(max(args.lengths), args.layers, "cuda")
    ps = {} if args.ps is None else {"ps": tuple(args.ps)}
    config = TraceConfig(stats=True, attention="kernels", impl="triton", **ps)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": importlib.metadata.version("triton"),
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "date": datetime.date.today().isoformat(),
        "model": "HookedTransformer, random weights, d_model 768, 12 heads x 64, bf16, rotary",
        "layers": args.layers,
        "ps": list(config.ps),
        "rows": [],
    }
    tl_failed = False
    for n in args.lengths:
        tokens = torch.randint(0, 1000, (1, n), device="cuda")
        trace(model, tokens[:, :256], config)  # compile and autotune outside the timing
        row = {"n": n, "tracer_stats": measure(lambda t=tokens: trace(model, t, config))}
        if not tl_failed:
            row["tl_run_with_cache_pattern"] = measure(
                lambda t=tokens: model.run_with_cache(
                    t, names_filter=lambda name: "pattern" in name
                )
            )
            tl_failed = "error" in row["tl_run_with_cache_pattern"]
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()

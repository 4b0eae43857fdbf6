"""GPU benchmark of the kernels backend against SDPA and FlexAttention.

For every sequence length and layout it times, with the median of CUDA-event timings:
SDPA causal (dense baseline), FlexAttention with the same block layout (compiled), and ours
(`kernels.api.sparse_attention`, impl="triton"), forward and forward+backward; then the row-statistics
kernel (with its peak memory) and the block-scoring kernels. "ideal" is density x SDPA causal time,
density being the fraction of causal 128 x 128 blocks a layout keeps.

    python bench/attention.py --lengths 4096 16384 65536 --out bench/results/attention.json
    python bench/attention.py --lengths 65536 --layouts random_10pct --forward-only --no-extras
    python bench/attention.py --lengths 65536 --layouts   # SDPA and the extras only
    python bench/attention.py --quick --loads descriptors --grid persistent --no-extras

``--loads`` / ``--grid`` force our kernels' variant (`kernels.triton.variants`; default "auto"),
``--budgets`` the top-p budget modes timed with the row statistics. Our kernels are tuned on each
layout anew (their autotuning key does not hold the density, so a process that runs one sparse
method tunes on that method's layout); ``--tune-once`` keeps the first layout's choice for the
rest, as the runs before 2026-12-08 did (dense first). Each layout's entry records the chosen
configurations (``"tuned"``). FlexAttention runs compiled,
with its TMA option where the installed torch has it. `bench/gpu_run.sh` runs the whole set of
comparisons, one process each.

Correctness is checked before timing (ours vs FlexAttention on the same layout, relative error):
an error above `WRONG_ABOVE` is marked ``"wrong"`` in the results, printed, and makes the run exit
with status 1 (after writing its results). `bench/config_check.py` then finds the configuration.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from kernels import api
from kernels.dispatch import GRIDS, LOADS
from kernels.layout import Layout, causal_block_mask, num_blocks
from kernels.reference import select_cumulative_blocks
from kernels.triton import block_sparse_attention
from workbench.io import atomic_write_json

BLOCK = 128
LAYOUTS = ("causal_dense", "random_10pct", "sink_window", "top_p_xattention")
compiled_flex = torch.compile(flex_attention, dynamic=False)
WRONG_ABOVE = 2e-2
"""Relative error (Frobenius, bf16) of ours vs FlexAttention above which a result is wrong."""


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` (Frobenius, in float32)."""
    want = want.float()
    return ((got.float() - want).norm() / want.norm().clamp_min(1e-30)).item()


FLEX_TMA = {"USE_TMA": True}
"""FlexAttention's TMA option (kernel_options), used where the installed torch accepts it."""


def median_ms(function: Callable[[], object]) -> float:
    return triton.testing.do_bench(function, warmup=50, rep=300, return_mode="median")


# ---------------------------------------------------------------------------- layouts
def causal_blocks(n: int) -> torch.Tensor:
    return causal_block_mask(n, n, BLOCK, BLOCK).cuda()[None, None]


def random_blocks(n: int, heads: int, density: float, seed: int = 0) -> torch.Tensor:
    """Keep the diagonal and a random ``density`` fraction of the causal blocks (per head)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    nb = num_blocks(n, BLOCK)
    keep = torch.rand(1, heads, nb, nb, device="cuda", generator=generator) < density
    return (keep | torch.eye(nb, dtype=torch.bool, device="cuda")) & causal_blocks(n)


def sink_window_blocks(n: int, sink_blocks: int = 1, window_blocks: int = 8) -> torch.Tensor:
    nb = num_blocks(n, BLOCK)
    rows = torch.arange(nb, device="cuda")[:, None]
    cols = torch.arange(nb, device="cuda")[None, :]
    keep = (cols < sink_blocks) | ((rows - cols >= 0) & (rows - cols < window_blocks))
    return keep[None, None]


def top_p_blocks(q: torch.Tensor, k: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """XAttention-style selection from antidiagonal scores of the benchmark's own inputs."""
    scores = api.block_scores(
        q, k, method="antidiagonal", block_q=BLOCK, block_k=BLOCK, stride=16, causal=True
    )
    return select_cumulative_blocks(scores, tau)


def realistic_qkv(n: int, heads: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """bf16 q, k, v with structure (a few heavy "sink" keys, local smoothness) so that score-based
    selections are not uniform."""
    generator = torch.Generator(device="cuda").manual_seed(seed)

    def draw() -> torch.Tensor:
        return torch.randn(1, heads, n, d, device="cuda", generator=generator)

    q, k, v = draw(), draw(), draw()
    drift = torch.cumsum(draw() * 0.05, dim=2)  # slowly varying component: local attention
    q, k = q + drift, k + drift
    k[:, :, :4] *= 4.0  # sink tokens
    return tuple(t.to(torch.bfloat16).contiguous() for t in (q, k, v))


def layout_blocks(name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The ``[1, heads or 1, n_blocks, n_blocks]`` block mask of the layout ``name`` (one of
    `LAYOUTS`) for ``q, k`` ``[1, heads, n, d]``."""
    n, heads = q.shape[2], q.shape[1]
    builders = {
        "causal_dense": lambda: causal_blocks(n),
        "random_10pct": lambda: random_blocks(n, heads, 0.1),
        "sink_window": lambda: sink_window_blocks(n),
        "top_p_xattention": lambda: top_p_blocks(q, k),
    }
    return builders[name]()


def causal_layout(blocks: torch.Tensor, n: int) -> Layout:
    """A causal `Layout` over ``n`` tokens keeping ``blocks`` (`BLOCK` x `BLOCK`)."""
    return Layout.from_block_mask(blocks, n, n, block_q=BLOCK, block_k=BLOCK, causal=True)


# ---------------------------------------------------------------------------- runners
def flex_block_mask(layout: Layout, n: int, heads: int) -> BlockMask:
    blocks = layout.block_mask().expand(1, heads, -1, -1)
    diagonal = torch.eye(blocks.shape[-1], dtype=torch.bool, device="cuda")
    partial = blocks & diagonal
    full = blocks & ~diagonal

    def ordered(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = mask.sum(-1, dtype=torch.int32)
        indices = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        return counts.contiguous(), indices.contiguous()

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return BlockMask.from_kv_blocks(
        *ordered(partial), *ordered(full), BLOCK_SIZE=BLOCK, mask_mod=causal, seq_lengths=(n, n)
    )


def time_pair(
    forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], backward: bool = True
) -> dict:
    fwd = median_ms(forward)
    if not backward:
        return {"fwd_ms": fwd}
    grad = torch.randn_like(inputs[0])

    def forward_backward() -> None:
        out = forward()
        torch.autograd.grad(out, inputs, grad)

    return {"fwd_ms": fwd, "fwd_bwd_ms": median_ms(forward_backward)}


def flex_options(inputs: tuple[torch.Tensor, ...], block_mask: BlockMask) -> dict:
    """FlexAttention's best options here: its TMA loads where this torch accepts them."""
    try:
        with torch.no_grad():
            compiled_flex(*inputs, block_mask=block_mask, kernel_options=FLEX_TMA)
    except Exception as error:  # an older torch: no such option
        print(f"FlexAttention without USE_TMA ({type(error).__name__})", flush=True)
        return {}
    return dict(FLEX_TMA)


def bench_layout(
    inputs: tuple[torch.Tensor, ...],
    blocks: torch.Tensor,
    sdpa: dict,
    causal_total: int,
    backward: bool,
    variant: dict,
    retune: bool = True,
) -> dict:
    """Ours (in the kernel ``variant``: loads and grid; tuned on this layout when ``retune``) vs
    FlexAttention (compiled, with its best options) on one causal block layout; times relative to
    the ideal."""
    n, heads = inputs[0].shape[2], inputs[0].shape[1]
    layout = causal_layout(blocks, n)
    density = layout.block_mask().sum().item() / (causal_total * layout.heads)
    block_mask = flex_block_mask(layout, n, heads)
    options = flex_options(inputs, block_mask)

    def ours() -> torch.Tensor:
        return api.sparse_attention(*inputs, layout, impl="triton", **variant)

    def flex() -> torch.Tensor:
        return compiled_flex(*inputs, block_mask=block_mask, kernel_options=options or None)

    if retune:
        block_sparse_attention.reset_tuning()
    with torch.no_grad():
        error = relative_error(ours(), flex())
    entry = {
        "density_of_causal": density,
        "ours_variant": variant,
        "flex_kernel_options": options,
        "rel_error_vs_flex": error,
        "wrong": error > WRONG_ABOVE,
        "ours": time_pair(ours, inputs, backward),
        "flex": time_pair(flex, inputs, backward),
    }
    for key in ("fwd_ms", "fwd_bwd_ms") if backward else ("fwd_ms",):
        ideal = density * sdpa[key]
        for impl in ("ours", "flex"):
            entry[impl][f"{key}_over_ideal"] = entry[impl][key] / ideal
        entry[f"speedup_vs_flex_{key[:-3]}"] = entry["flex"][key] / entry["ours"][key]
    entry["tuned"] = block_sparse_attention.tuned_configs()
    return entry


def bench_length(
    n: int,
    heads: int,
    d: int,
    layouts: tuple[str, ...],
    backward: bool,
    extras: bool,
    variant: dict,
    budgets: tuple[str, ...],
    retune: bool = True,
) -> dict:
    """SDPA, then ours and FlexAttention on each of ``layouts`` (names in `LAYOUTS`, may be
    none); with ``extras`` also the row-statistics and block-scoring kernels."""
    q, k, v = realistic_qkv(n, heads, d)
    inputs = tuple(t.detach().requires_grad_(True) for t in (q, k, v))
    sdpa = time_pair(
        lambda: torch.nn.functional.scaled_dot_product_attention(*inputs, is_causal=True),
        inputs,
        backward,
    )
    causal_total = causal_blocks(n).sum().item()
    result = {"n": n, "sdpa_causal": sdpa, "layouts": {}}
    for name in layouts:
        blocks = layout_blocks(name, q, k)
        entry = bench_layout(inputs, blocks, sdpa, causal_total, backward, variant, retune)
        result["layouts"][name] = entry
        print(
            f"N={n:6d} {name:18s} density {entry['density_of_causal']:.3f}  "
            f"ours {entry['ours']['fwd_ms']:8.3f} ms  flex {entry['flex']['fwd_ms']:8.3f} ms  "
            f"ideal {entry['density_of_causal'] * sdpa['fwd_ms']:8.3f} ms  "
            f"err {entry['rel_error_vs_flex']:.1e}" + ("  WRONG" if entry["wrong"] else ""),
            flush=True,
        )
    if not extras:
        return result
    result["row_stats"] = bench_row_stats(q, k, sdpa["fwd_ms"], budgets)
    result["block_scores"] = {
        method: median_ms(
            lambda m=method: api.block_scores(
                q, k, method=m, block_q=BLOCK, block_k=BLOCK, stride=16, causal=True, impl="triton"
            )
        )
        for method in ("mean_pooled", "antidiagonal")
    }
    return result


class _SearchPasses(logging.Handler):
    """Remembers the pass count of the last top-p search (`kernels.triton.row_stats` logs it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("top-p search"):
            self.last = record.args[0]


def bench_row_stats(
    q: torch.Tensor, k: torch.Tensor, sdpa_fwd_ms: float, budgets: tuple[str, ...]
) -> dict:
    """Row statistics alone, and with top-p budgets (four masses) in each mode of ``budgets``:
    time, search passes, peak extra memory; bracket mode also how many (row, p) it gets exact
    (interval closed) and its estimate's error against the exact mode's budgets."""
    n = q.shape[2]
    ps = (0.5, 0.9, 0.95, 0.99)
    statistics_only = median_ms(lambda: api.row_stats(q, k, causal=True, ps=(), impl="triton"))
    result = {
        "statistics_only_ms": statistics_only,
        "statistics_only_over_sdpa_fwd": statistics_only / sdpa_fwd_ms,
        "n_x_n_fp32_bytes_one_head": n * n * 4,
    }
    print(
        f"N={n:6d} row_stats without budgets {statistics_only:8.2f} ms "
        f"({statistics_only / sdpa_fwd_ms:4.2f}x SDPA)",
        flush=True,
    )
    exact = None
    for mode in budgets:
        passes = _SearchPasses()
        search_log = logging.getLogger("kernels.triton.row_stats")
        search_log.addHandler(passes)
        search_log.setLevel(logging.DEBUG)

        def stats(mode=mode) -> object:
            return api.row_stats(q, k, causal=True, ps=ps, budgets=mode, impl="triton")

        out = stats()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stats()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        elapsed = median_ms(stats)
        search_log.removeHandler(passes)
        entry = {
            "ms": elapsed,
            "over_sdpa_fwd": elapsed / sdpa_fwd_ms,
            "search_passes": passes.last,
            "peak_extra_bytes": extra,
        }
        if mode == "exact":
            exact = out.top_p_budget
        elif mode == "bracket":
            closed = out.top_p_budget_low == out.top_p_budget_high
            entry["closed_fraction"] = closed.double().mean().item()
            if exact is not None:
                error = (out.top_p_budget - exact).abs().double() / exact.clamp(min=1).double()
                contains = (out.top_p_budget_low <= exact) & (exact <= out.top_p_budget_high)
                entry["contains_exact"] = bool(contains.all())
                entry["estimate_exact_fraction"] = (error == 0).double().mean().item()
                entry["rel_error_p99"] = error.flatten()[: 2**24].quantile(0.99).item()
        result[mode] = entry
        print(
            f"N={n:6d} row_stats budgets={mode:8s} {elapsed:9.2f} ms "
            f"({elapsed / sdpa_fwd_ms:5.1f}x SDPA, {passes.last} search passes)"
            + (f", closed {entry['closed_fraction']:.3f}" if "closed_fraction" in entry else ""),
            flush=True,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--d-head", type=int, default=128)
    parser.add_argument("--layouts", nargs="*", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--forward-only", action="store_true", help="skip forward+backward")
    parser.add_argument(
        "--no-extras", action="store_true", help="skip the row-statistics and block-score kernels"
    )
    parser.add_argument("--loads", choices=LOADS, default="auto", help="our kernels' loads")
    parser.add_argument("--grid", choices=GRIDS, default="auto", help="our forward's grid")
    parser.add_argument(
        "--budgets", nargs="*", choices=("exact", "bracket"), default=["exact", "bracket"]
    )
    parser.add_argument(
        "--quick", action="store_true", help="16K tokens only: a few minutes on one GPU"
    )
    parser.add_argument(
        "--tune-once",
        action="store_true",
        help="tune our kernels on the first layout only (default: on each layout)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/attention.json"))
    args = parser.parse_args()
    if args.quick:
        args.lengths = [16384]
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "dtype": "bfloat16",
        "batch": 1,
        "heads": args.heads,
        "d_head": args.d_head,
        "block": BLOCK,
        "capability": list(torch.cuda.get_device_capability()),
        "variant": {"loads": args.loads, "grid": args.grid},
        "tuning": "once" if args.tune_once else "per_layout",
        "lengths": [],
    }
    for n in args.lengths:
        results["lengths"].append(
            bench_length(
                n,
                args.heads,
                args.d_head,
                tuple(args.layouts),
                backward=not args.forward_only,
                extras=not args.no_extras,
                variant={"loads": args.loads, "grid": args.grid},
                budgets=tuple(args.budgets),
                retune=not args.tune_once,
            )
        )
        atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    wrong = [
        f"{entry['n']} {name}"
        for entry in results["lengths"]
        for name, layout in entry["layouts"].items()
        if layout["wrong"]
    ]
    if wrong:
        raise SystemExit(f"wrong outputs (error > {WRONG_ABOVE}): {', '.join(wrong)}")


if __name__ == "__main__":
    main()

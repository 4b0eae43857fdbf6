"""Offline compile check of the kernels for Hopper (sm_90a), no GPU needed.

Each kernel is launched through its own Python launcher on small CPU tensors whose strides and
integer arguments specialise like the benchmark's (bf16, 32 heads, d_head 128, 128-blocks; every
length and stride a multiple of 16), with the kernel's launch captured instead of run. Every
configuration its autotuner may try for that launch is then compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, and the cubin read with the ``cuobjdump`` inside Triton's wheel:

* registers per thread, stack and local-memory bytes (spills, ``cuobjdump --dump-resource-usage``);
* TMA loads (``UTMALDG``) and wgmma (``HGMMA``) in the SASS;
* warp specialisation: a ``ttg.warp_specialize`` region in the TTGIR and ``setmaxnreg`` in the PTX.

    python bench/compile_check.py                  # table, and bench/results/compile_check_<triton>.json
    python bench/compile_check.py --kernels forward --fail-on-spills

Run it before every GPU run (``bench/gpu_run.sh`` does). It runs under the installed Triton; the
device has Triton 3.6, CI 3.9 (see README, "Triton versions").
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.layout import Layout
from kernels.triton import block_sparse_attention as attention
from kernels.triton import row_stats
from kernels.triton.variants import Variant

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
N, HEADS, D_HEAD, BLOCK = 4096, 32, 128, 128
"""Launch shapes: 4096 tokens specialise like 64K (multiples of 16), and fit in CPU memory."""


@dataclass
class Report:
    kernel: str
    variant: str
    config: str
    registers: int
    stack_bytes: int
    local_bytes: int
    spill_instructions: int
    tma_loads: int
    wgmma: int
    warp_specialized: bool
    setmaxnreg: int
    shared_bytes: int
    error: str | None = None


class Captured(Exception):
    """Raised by the patched autotuner: the launch's arguments, nothing run."""

    def __init__(self, kernel, args: tuple, kwargs: dict) -> None:
        super().__init__(kernel.fn.__name__)
        self.kernel, self.args, self.kwargs = kernel, args, kwargs


def capture(kernel, launch: Callable[[], object]) -> Captured:
    """Run ``launch`` until it launches ``kernel``; return that launch's arguments."""

    def run(*args, grid=None, warmup=False, **kwargs):
        raise Captured(kernel, args, kwargs)

    kernel.run = run
    try:
        launch()
    except Captured as captured:
        return captured
    finally:
        del kernel.run
    raise RuntimeError(f"{kernel.fn.__name__} was not launched")


def signature(fn, values: dict) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` for `ASTSource`, specialised as a launch would be:
    integers equal to 1 become constants, multiples of 16 and pointers get divisibility 16."""
    types = {
        torch.bfloat16: "*bf16",
        torch.float16: "*fp16",
        torch.float32: "*fp32",
        torch.float64: "*fp64",
        torch.int32: "*i32",
        torch.int64: "*i64",
        torch.int8: "*i8",
        torch.uint8: "*u8",
        torch.bool: "*i1",
    }
    sig, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        value = values[name]
        param = fn.params[index]
        if param.is_constexpr or value is None:
            sig[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            sig[name] = types[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                sig[name] = "constexpr"
                constexprs[name] = 1
            else:
                sig[name] = "i64" if abs(value) >= 2**31 else "i32"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot type {value!r}")
    return sig, constexprs, attrs


def resources(cubin: bytes) -> tuple[dict, str]:
    """Resource usage and SASS of a cubin (Triton's cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", file.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run(
            [CUOBJDUMP, "--dump-sass", file.name], capture_output=True, text=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {key: int(value) for key, value in fields.items()}, sass


def compile_config(captured: Captured, config: triton.Config, kernel: str, variant: str) -> Report:
    fn = captured.kernel.fn
    values = dict(zip(fn.arg_names, captured.args, strict=False))
    values.update(captured.kwargs)
    values.update(config.kwargs)
    label = (
        f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} "
        f"s{config.num_stages}" + (" ws" if config.kwargs.get("WARP_SPECIALIZE") else "")
    )
    sig, constexprs, attrs = signature(fn, values)
    try:
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs, attrs),
            target=TARGET,
            options={"num_warps": config.num_warps, "num_stages": config.num_stages},
        )
    except Exception as error:  # report and go on: one failing configuration is a finding
        message = " ".join(str(error).split())
        return Report(kernel, variant, label, 0, 0, 0, 0, 0, 0, False, 0, 0, message[-300:])
    usage, sass = resources(compiled.asm["cubin"])
    return Report(
        kernel=kernel,
        variant=variant,
        config=label,
        registers=usage.get("REG", 0),
        stack_bytes=usage.get("STACK", 0),
        local_bytes=usage.get("LOCAL", 0),
        spill_instructions=len(re.findall(r"\b(?:STL|LDL)\b", sass)),
        tma_loads=len(re.findall(r"\bUTMALDG\b", sass)),
        wgmma=len(re.findall(r"\bHGMMA\b", sass)),
        warp_specialized="ttg.warp_specialize" in compiled.asm["ttgir"],
        setmaxnreg=compiled.asm["ptx"].count("setmaxnreg"),
        shared_bytes=compiled.metadata.shared,
    )


def check(
    kernel,
    launch: Callable[[], object],
    name: str,
    variant: str,
    before: tuple = (),
    stubs: dict | None = None,
) -> list[Report]:
    """Compile every configuration the autotuner may try for ``launch``'s launch of ``kernel``
    (the kernels ``before`` it, launched first, are skipped, or run their entry of ``stubs`` on
    their arguments instead)."""
    for other in before:
        other.run = (stubs or {}).get(other, lambda *args, **kwargs: None)
    try:
        captured = capture(kernel, launch)
    finally:
        for other in before:
            del other.run
    named = dict(zip(kernel.arg_names, captured.args, strict=False))
    configs = kernel.configs
    if kernel.early_config_prune is not None:
        configs = kernel.early_config_prune(configs, named, **captured.kwargs)
    return [compile_config(captured, config, name, variant) for config in configs]


# ---------------------------------------------------------------------------- the launches
def inputs(dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(1, HEADS, N, D_HEAD, dtype=dtype) for _ in range(4))


def causal_layout() -> Layout:
    return Layout.dense(N, N, block_q=BLOCK, block_k=BLOCK, causal=True)


def attention_checks(kernels: set[str]) -> list[Report]:
    q, k, v, grad = inputs()
    layout = causal_layout()
    out = torch.empty_like(q)
    lse = torch.empty(1, HEADS, N)
    reports = []
    for loads in ("pointers", "descriptors"):
        grids = ("tiles", "persistent") if "forward" in kernels else ()
        for grid in grids:
            variant = Variant(loads, grid)
            reports += check(
                attention._fwd_kernel,
                lambda variant=variant: attention.forward(q, k, v, layout, 0.088, variant),
                "forward",
                f"{loads}/{grid}",
            )
        variant = Variant(loads, "tiles")

        def backward(variant=variant):
            return attention.backward(q, k, v, out, lse, grad, layout, 0.088, variant)

        delta = attention._delta_kernel
        if "dq" in kernels:
            reports += check(attention._dq_kernel, backward, "dq", loads, (delta,))
        if "dkdv" in kernels:
            dq = attention._dq_kernel
            reports += check(attention._dkdv_kernel, backward, "dkdv", loads, (delta, dq))
    return reports


def row_stats_checks(kernels: set[str]) -> list[Report]:
    q, k, _, _ = inputs()
    reports = []
    launches: dict[str, tuple[object, Callable[[], object]]] = {
        "stats": (
            row_stats._stats_kernel,
            lambda: row_stats.row_stats(q, k, causal=True, ps=()),
        ),
        "search": (
            row_stats._search_kernel,
            lambda: row_stats.row_stats(q, k, causal=True, ps=(0.5, 0.9, 0.95, 0.99)),
        ),
        "bracket": (
            row_stats._bracket_kernel,
            lambda: row_stats.row_stats(q, k, causal=True, budgets="bracket"),
        ),
    }
    for name, (kernel, launch) in launches.items():
        if name in kernels:
            before = {
                "stats": (),
                "bracket": (row_stats._stats_kernel,),
                "search": (row_stats._stats_kernel, row_stats._bracket_kernel),
            }[name]
            stubs = {row_stats._bracket_kernel: _open_intervals}
            reports += check(kernel, launch, name, "pointers", before, stubs)
    return reports


def _open_intervals(*args, **kwargs) -> None:
    """Stands in for the bracket kernel before a search pass: every budget interval
    ``[BudgetLow, BudgetHigh]`` (its 9th and 10th arguments) open, so that the search launches."""
    args[8].fill_(0)
    args[9].fill_(1)


KERNELS = ("forward", "dq", "dkdv", "stats", "search", "bracket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--fail-on-spills", action="store_true", help="exit 1 when a configuration spills"
    )
    args = parser.parse_args()
    chosen = set(args.kernels)
    reports = attention_checks(chosen) + row_stats_checks(chosen)
    print(f"triton {triton.__version__}, target sm_90a, bf16, d_head {D_HEAD}, block {BLOCK}")
    header = (
        f"{'kernel':8s} {'variant':22s} {'config':18s} {'regs':>4s} {'stack':>5s} "
        f"{'spill':>5s} {'tma':>4s} {'wgmma':>5s} {'ws':>3s} {'smem':>6s}"
    )
    print(header)
    for r in reports:
        if r.error:
            print(f"{r.kernel:8s} {r.variant:22s} {r.config:18s} error: {r.error}")
            continue
        print(
            f"{r.kernel:8s} {r.variant:22s} {r.config:18s} {r.registers:4d} {r.stack_bytes:5d} "
            f"{r.spill_instructions:5d} {r.tma_loads:4d} {r.wgmma:5d} "
            f"{'yes' if r.warp_specialized else 'no':>3s} {r.shared_bytes:6d}"
        )
    out = args.out or Path(f"bench/results/compile_check_triton{triton.__version__}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from workbench.io import atomic_write_json

    atomic_write_json(
        out,
        {
            "triton": triton.__version__,
            "torch": torch.__version__,
            "target": "cuda sm_90a",
            "date": datetime.date.today().isoformat(),
            "shapes": {"n": N, "heads": HEADS, "d_head": D_HEAD, "block": BLOCK},
            "reports": [asdict(r) for r in reports],
        },
    )
    print(f"wrote {out}")
    spills = [r for r in reports if r.stack_bytes or r.spill_instructions or r.error]
    if args.fail_on_spills and spills:
        raise SystemExit(f"{len(spills)} configurations spill or fail to compile")


if __name__ == "__main__":
    main()

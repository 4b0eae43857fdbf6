"""GPU correctness of every autotuning configuration of the block-sparse attention kernels, each
forced on its own (the autotuner otherwise runs only the one it finds fastest, and caches it per
key, not per layout).

For each sequence length, layout and variant (loads x grid), each forward configuration that fits
runs alone and its output is compared with the reference (`kernels.reference` in float32 on the
same bf16 inputs); then, with the forward on its first configuration, each dQ and dK/dV
configuration runs alone and the gradients are compared with autograd through the reference.

    python bench/config_check.py --lengths 4096 --out bench/results/config_check.json
    python bench/config_check.py --warp-specialised   # also the withdrawn configurations
"""

from __future__ import annotations

import argparse
import datetime
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import triton

from bench.attention import (
    LAYOUTS,
    WRONG_ABOVE,
    causal_layout,
    layout_blocks,
    realistic_qkv,
    relative_error,
)
from kernels import api
from kernels.triton import block_sparse_attention as kernels_module
from kernels.triton.common import gpu_configs
from workbench.io import atomic_write_json


@contextmanager
def forced(kernel: triton.runtime.Autotuner, config: triton.Config) -> Iterator[None]:
    """Run ``kernel`` with ``config`` only, whatever its autotuner would choose."""
    prune, cache = kernel.early_config_prune, dict(kernel.cache)
    kernel.early_config_prune = lambda configs, named_args, **kwargs: [config]
    kernel.cache.clear()
    try:
        yield
    finally:
        kernel.early_config_prune = prune
        kernel.cache.clear()
        kernel.cache.update(cache)


def candidates(kernel: triton.runtime.Autotuner, descriptors: bool) -> list[triton.Config]:
    """The configurations the kernel's own pruning offers on the tiles grid for bf16 inputs and
    128 x 128 layout blocks, with or without ``descriptors``."""
    args = {"BLOCK_Q": 128, "BLOCK_K": 128, "DESCRIPTORS": descriptors}
    args["Q"] = torch.empty(0, dtype=torch.bfloat16)
    return kernel.early_config_prune(kernel.configs, args)


def withdrawn_forward_configs() -> list[triton.Config]:
    """The forward's warp-specialised configurations withdrawn after wrong outputs on an H100
    (`kernels.triton.block_sparse_attention.WITHDRAWN_FWD_WS_SHAPES`)."""
    return gpu_configs(kernels_module.WITHDRAWN_FWD_WS_SHAPES, WARP_SPECIALIZE=True)


def describe(config: triton.Config) -> str:
    kw = config.kwargs
    ws = " ws" if kw.get("WARP_SPECIALIZE") else ""
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']} w{config.num_warps} s{config.num_stages}{ws}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument(
        "--warp-specialised",
        action="store_true",
        help="also the withdrawn warp-specialised forward configurations (per-tile grid)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.lengths:
        q, k, v = realistic_qkv(n, args.heads, 128)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        grad = torch.randn_like(q)
        for name in args.layouts:
            layout = causal_layout(layout_blocks(name, q, k), n)
            want = api.sparse_attention(q, k, v, layout, impl="reference")
            want_grads = torch.autograd.grad(want, (q, k, v), grad)
            for loads in ("descriptors", "pointers"):
                for grid in ("tiles", "persistent"):
                    fwd = kernels_module._fwd_kernel
                    configs = candidates(fwd, loads == "descriptors")
                    if args.warp_specialised and loads == "descriptors":
                        configs += withdrawn_forward_configs()
                    for config in configs:
                        if grid == "persistent" and config.kwargs.get("WARP_SPECIALIZE"):
                            continue
                        with forced(fwd, config):
                            got = api.sparse_attention(
                                q, k, v, layout, impl="triton", loads=loads, grid=grid
                            )
                        error = relative_error(got, want)
                        rows.append(
                            dict(
                                n=n,
                                layout=name,
                                loads=loads,
                                grid=grid,
                                kernel="fwd",
                                config=describe(config),
                                error=error,
                            )
                        )
                        print(
                            f"N={n:6d} {name:17s} {loads:11s} {grid:10s} fwd  "
                            f"{describe(config):22s} err {error:.1e}"
                            f"{'  WRONG' if error > WRONG_ABOVE else ''}",
                            flush=True,
                        )
                    if grid == "persistent":
                        continue
                    for kernel_name in ("_dq_kernel", "_dkdv_kernel"):
                        kernel = getattr(kernels_module, kernel_name)
                        for config in candidates(kernel, loads == "descriptors"):
                            with forced(kernel, config):
                                out = api.sparse_attention(
                                    q, k, v, layout, impl="triton", loads=loads, grid=grid
                                )
                                grads = torch.autograd.grad(out, (q, k, v), grad)
                            picked = grads[:1] if kernel_name == "_dq_kernel" else grads[1:]
                            wanted = (
                                want_grads[:1] if kernel_name == "_dq_kernel" else want_grads[1:]
                            )
                            error = max(
                                relative_error(g, w) for g, w in zip(picked, wanted, strict=True)
                            )
                            rows.append(
                                dict(
                                    n=n,
                                    layout=name,
                                    loads=loads,
                                    grid=grid,
                                    kernel=kernel_name,
                                    config=describe(config),
                                    error=error,
                                )
                            )
                            print(
                                f"N={n:6d} {name:17s} {loads:11s} {grid:10s} "
                                f"{kernel_name[1:-7]:4s} {describe(config):22s} err {error:.1e}"
                                f"{'  WRONG' if error > WRONG_ABOVE else ''}",
                                flush=True,
                            )
    result = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        heads=args.heads,
        tolerance=WRONG_ABOVE,
        rows=rows,
    )
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

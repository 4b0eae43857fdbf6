"""Which variant of the block-sparse attention kernels a call runs, and the host-side pieces the
variants need.

Two independent choices, each ``"auto"`` or forced:

* **loads**: ``"pointers"`` (pointer arithmetic, any GPU, any strides) or ``"descriptors"`` (device-
  side tensor descriptors: TMA loads on Hopper). ``"auto"`` takes descriptors on compute capability
  9.x (H100, H200) for the forward when every tensor the kernels load has strides a descriptor
  can take (`descriptor_reason`), pointers otherwise (and with a Triton older than
  `DESCRIPTOR_TRITON`) and for the backward's dQ and dK/dV kernels (`BACKWARD_DESCRIPTORS`). A
  forced ``"descriptors"`` that cannot run raises (no silent fallback); in the Triton interpreter it
  runs (that is how the tests check it), ``"auto"`` takes pointers there. Warp-specialised
  configurations could serve only the per-tile forward grid (Triton's Hopper pass fails on the
  persistent grid's nested loops); none is offered at present
  (`kernels.triton.block_sparse_attention`).
* **grid** of the forward: ``"tiles"`` (one program per query tile) or ``"persistent"`` (one
  program per resident slot, walking a work list of (batch, head, query block) items ordered
  longest first, `work_list`). ``"auto"`` takes tiles: on an H100 at 64K the persistent grid was
  no faster on layouts of 4-18 key blocks per query block and slower at ~50 (bench/NOTES.md,
  2026-12-07).

The choice is logged at debug level (logger ``kernels.api``) with the device capability and the
Triton version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import triton

from kernels.dispatch import Grid, Loads, check_variant, interpret_mode
from kernels.layout import Layout

logger = logging.getLogger("kernels.api")

DESCRIPTOR_CAPABILITIES = (9,)
"""Compute capability majors on which ``loads="auto"`` takes tensor descriptors (Hopper: compiled
there by `bench/compile_check.py`, run against FlexAttention by `bench/attention.py` and checked
configuration by configuration by `bench/config_check.py`)."""
DESCRIPTOR_TRITON = (3, 6)
"""Oldest Triton whose descriptor kernels were checked (the device's; CI runs 3.9)."""
BACKWARD_DESCRIPTORS = False
"""Whether ``loads="auto"`` takes descriptors for the backward too. No: on an H100 at 64K (bf16, 32
heads, d_head 128) the dQ and dK/dV kernels ran 5-19% slower with descriptor loads than with
pointers on every layout of the benchmark, while the forward ran up to 14% faster with them
(bench/NOTES.md, "Third measurement", 2026-12-07)."""
PROGRAMS_PER_SM = 2
"""Persistent programs per multiprocessor."""
INTERPRETER_PROGRAMS = 3
"""Persistent programs under the interpreter (few, so that each walks several items)."""
DESCRIPTOR_ALIGNMENT = 16
"""Bytes: a descriptor's base address and every stride but the last must be multiples of it."""


@dataclass(frozen=True)
class Variant:
    """The variant a call runs: ``loads`` and ``grid`` resolved (never ``"auto"``)."""

    loads: Literal["pointers", "descriptors"]
    grid: Literal["tiles", "persistent"]


PLAIN = Variant(loads="pointers", grid="tiles")
"""The variant that runs on every GPU and in the interpreter."""


def descriptor_reason(**tensors: torch.Tensor) -> str | None:
    """Why tensor descriptors cannot address the named ``[batch, heads, len, d]`` tensors (None
    when they can): the last stride must be 1, the base address and the other strides multiples of
    `DESCRIPTOR_ALIGNMENT` bytes (a broadcast dimension, stride 0, cannot be described)."""
    for name, tensor in tensors.items():
        size = tensor.element_size()
        if tensor.stride(-1) != 1:
            return f"{name} has stride {tensor.stride(-1)} on its last dimension (must be 1)"
        if tensor.data_ptr() % DESCRIPTOR_ALIGNMENT:
            return f"{name} starts at an address not aligned to {DESCRIPTOR_ALIGNMENT} bytes"
        for stride in tensor.stride()[:-1]:
            if stride == 0 or (stride * size) % DESCRIPTOR_ALIGNMENT:
                return (
                    f"{name} has strides {tuple(tensor.stride())}: each but the last must be a "
                    f"non-zero multiple of {DESCRIPTOR_ALIGNMENT} bytes"
                )
    return None


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def choose(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    loads: Loads = "auto",
    grid: Grid = "auto",
    *,
    backward: bool = False,
) -> Variant:
    """The `Variant` for attention of ``q`` over ``k, v`` with ``layout`` (module docstring), for
    its forward or (``backward``) its gradient kernels; ``ValueError`` when a forced one cannot
    run."""
    check_variant(loads, grid)
    capability = _capability(q.device)
    reason = descriptor_reason(q=q, k=k, v=v)
    version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if reason is None and version < DESCRIPTOR_TRITON:
        reason = f"triton {triton.__version__} is older than {DESCRIPTOR_TRITON}"
    if loads == "descriptors" and reason is not None:
        raise ValueError(f"loads='descriptors' cannot run: {reason}")
    if loads == "auto":
        if reason is None and (interpret_mode() or capability is None):
            reason = "the Triton interpreter" if interpret_mode() else f"device {q.device}"
        elif reason is None and capability[0] not in DESCRIPTOR_CAPABILITIES:
            reason = f"compute capability {capability[0]}.{capability[1]}"
        elif reason is None and backward and not BACKWARD_DESCRIPTORS:
            reason = "the backward (its descriptor loads measured slower: BACKWARD_DESCRIPTORS)"
        loads = "pointers" if reason is not None else "descriptors"
    if grid == "auto":
        grid = "tiles"
    logger.debug(
        "sparse_attention(impl='triton') %s runs %s loads and a %s grid (%s; capability %s, "
        "triton %s)",
        "backward" if backward else "forward",
        loads,
        grid,
        reason or "chosen",
        capability,
        triton.__version__,
    )
    return Variant(loads=loads, grid=grid)


def descriptor_ready(grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out`` itself when descriptors can address it, else a contiguous copy (the output
    gradient autograd hands over may be broadcast, e.g. from ``out.sum()``)."""
    if descriptor_reason(grad_out=grad_out) is None:
        return grad_out
    logger.debug("sparse_attention backward copies grad_out for descriptor loads")
    return grad_out.contiguous()


def work_list(layout: Layout, batch: int, heads: int) -> torch.Tensor:
    """``[batch * heads * n_q_blocks]`` int32 work items ``(b * heads + h) * n_q_blocks + i`` of
    the persistent forward, the query blocks that list the most key blocks first."""
    counts = layout.kv_counts.expand(batch, heads, -1).reshape(-1)
    return torch.argsort(counts, descending=True, stable=True).to(torch.int32)


def persistent_programs(device: torch.device, n_items: int) -> int:
    """Programs of the persistent grid: `PROGRAMS_PER_SM` per multiprocessor (at most one per
    work item)."""
    if interpret_mode() or device.type != "cuda":
        return max(min(INTERPRETER_PROGRAMS, n_items), 1)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(min(PROGRAMS_PER_SM * sms, n_items), 1)


def scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global scratch memory for device-side tensor descriptors (``triton.set_allocator``)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")

"""What a training checkpoint holds (the model, the optimizer, the step and the data generator), written
and read through the checkpoint store (`workbench.checkpoint`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench import checkpoint
from workbench.models import build_model, to_device
from workbench.train.config import (
    RESUMABLE_FIELDS,
    EarlyStop,
    SparseConfig,
    TrainConfig,
    attach_sparse_state,
    migrate_config,
)
from workbench.train.optim import learning_rate


@dataclass
class TrainState:
    """What a checkpoint restores besides the config: the model, the optimizer, the step and the
    training-data generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0


def save_checkpoint(out_dir: Path, state: TrainState, config: TrainConfig) -> Path:
    """Write the checkpoint of ``state.step`` with `workbench.checkpoint.write`; returns its
    folder. Tensors: ``model/<name>`` and ``optimizer/<index>/<key>``; JSON state: ``step``,
    ``config``, ``data_generator_state``, ``scheduler`` and ``optimizer_scalars``."""
    tensors = {f"model/{name}": value for name, value in state.model.state_dict().items()}
    scalars: dict[str, Any] = {}
    for index, entry in state.optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    generator_state = base64.b64encode(state.generator.get_state().numpy().tobytes()).decode()
    meta = {
        "step": state.step,
        "config": config.to_dict(),
        "data_generator_state": generator_state,
        "scheduler": {"step": state.step, "lr": learning_rate(config, max(state.step - 1, 0))},
        "optimizer_scalars": scalars,
    }
    return checkpoint.write(out_dir, state.step, meta, tensors)


def restore(
    state: TrainState, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Load a checkpoint's JSON state and tensors (`workbench.checkpoint.Checkpoint`) into
    ``state``."""
    state.model.load_state_dict(_model_tensors(tensors))
    optimizer_state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    for name, value in meta["optimizer_scalars"].items():
        index, key = name.split("/", 1)
        optimizer_state.setdefault(int(index), {})[key] = value
    param_groups = state.optimizer.state_dict()["param_groups"]
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": param_groups})
    raw = base64.b64decode(meta["data_generator_state"])
    state.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    state.step = int(meta["step"])


def _model_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        name.removeprefix("model/"): value
        for name, value in tensors.items()
        if name.startswith("model/")
    }


def check_resumable(saved: Mapping[str, Any], config: TrainConfig) -> None:
    """Raise ``ValueError`` when a checkpoint's config differs from ``config`` outside
    `RESUMABLE_FIELDS` (a config saved in the older schema is compared in today's)."""
    saved = {**migrate_config(saved)}
    for name, convert in (("sparse", SparseConfig), ("early_stop", EarlyStop)):
        if isinstance(saved.get(name), Mapping):  # as to_dict writes it (defaults left out)
            saved[name] = convert.from_dict(saved[name]).to_dict()
    current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
    changed = sorted(
        name
        for name in set(saved) | set(current)
        if name not in RESUMABLE_FIELDS and saved.get(name) != current.get(name)
    )
    if changed:
        raise ValueError(
            f"the checkpoint was written with a different config (fields {changed}); use another "
            "out_dir or resume=False"
        )


def load_model(
    out_dir: str | Path, device: str | torch.device = "cpu", *, previous: bool = False
) -> tuple[nn.Module, TrainConfig, int]:
    """``(model, config, step)`` of the newest checkpoint in ``out_dir`` (a legacy
    ``checkpoint.json`` pair too), the model in eval mode. A damaged newest checkpoint raises
    `CheckpointError`; ``previous=True`` takes the newest one that verifies instead."""
    found = checkpoint.load(out_dir, previous=previous)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {out_dir}")
    config = TrainConfig.from_dict(found.state["config"])
    model = build_model(config.resolved_task(), config.model_config())
    attach_sparse_state(model, config)
    model.load_state_dict(_model_tensors(found.tensors))
    return to_device(model, torch.device(device)).eval(), config, found.step

"""SAEs of a model end to end: harvest ``hook_z`` of one layer from a source, train with sae-lens,
evaluate on held-out rows and by splicing, save it all in one folder.

`train_model_sae` works on any model the capture pass routes (TransformerLens, TransformerBridge,
the bundled MiniLM) with a `TaskSource` or a `TextSource`; `train_run_sae` does it for a run of the
workbench: its trained model, its task, its sparse method (the SAE sees the activations the model
computes as trained; ``dense=True`` harvests the same model with dense attention instead), saved in
``<run>/saes/<name>/``; `train_text_sae` does it for the bundled MiniLM over a text file.
`evaluate_saved` measures a saved SAE again on fresh held-out examples.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toy_tasks.base import ToyTask
from workbench.capture import SparsePlan
from workbench.sae.config import SAEConfig
from workbench.sae.evaluation import (
    as_dict,
    embedding_splice_metrics,
    reconstruction_metrics,
    splice_metrics,
)
from workbench.sae.harvest import harvest
from workbench.sae.sources import Source, TaskSource, TextSource
from workbench.sae.training import TrainedSAE, check_new_folder, load_sae, train_sae

HARVEST_SEED = 1
"""Seed of the examples an SAE trains on (`TaskSource.seed`)."""
EVAL_SEED = 2
"""Seed of the held-out examples it is evaluated on."""
IN_MEMORY_BYTES = 1 << 30
"""Activations above this size are harvested to chunk files beside the SAE (removed once it is
trained)."""


def evaluate(
    trained: TrainedSAE,
    model: nn.Module,
    source: Source,
    *,
    sparse: SparsePlan | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruction metrics on ``source``'s rows and splice metrics on its examples (the task's
    loss for a `TaskSource`, the pooled embedding for a `TextSource`), as one dict."""
    held_out = harvest(
        model, source.batches(_device(model)), trained.layer, sparse=sparse, progress=progress
    )
    rows, _ = held_out.tensors()
    reconstruction = reconstruction_metrics(trained.sae, rows)
    if isinstance(source, TaskSource):
        batch = source.examples(torch.arange(source.n_examples)).to(_device(model))
        splice = splice_metrics(model, trained.sae, trained.layer, source.task, batch, sparse)
    else:
        inputs = next(iter(source.batches(_device(model))))[0]
        splice = embedding_splice_metrics(model, trained.sae, trained.layer, inputs, sparse)
    return as_dict(reconstruction, splice) | {"eval_source": source.describe()}


def train_model_sae(
    model: nn.Module,
    source: Source,
    eval_source: Source,
    layer: int,
    config: SAEConfig,
    folder: str | Path,
    *,
    model_name: str,
    sparse: SparsePlan | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainedSAE:
    """Harvest layer ``layer``'s ``z`` of ``model`` from ``source``, train an SAE of ``config``
    on it, evaluate it on ``eval_source`` (`evaluate`) and save it in ``folder`` (which must not
    exist), its metadata holding the sources, the sparse plan, ``extra`` and the metrics."""
    folder = check_new_folder(folder)
    config.check_width(hook_z_width(model))
    spill = folder.with_name(f".{folder.name}.activations")
    shutil.rmtree(spill, ignore_errors=True)  # our own leftover of a crashed harvest
    large = source.n_rows() * hook_z_width(model) * 4 > IN_MEMORY_BYTES
    store = harvest(
        model,
        source.batches(_device(model)),
        layer,
        sparse=sparse,
        folder=spill if large else None,
        info={"source": source.describe(), "sparse": None if sparse is None else sparse.describe()},
        progress=progress,
        total=source.n_batches(),
    )
    try:
        trained = train_sae(
            store,
            config,
            folder,
            layer=layer,
            model_name=model_name,
            extra=extra,
            progress=progress,
        )
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    trained.metadata["metrics"] = evaluate(trained, model, eval_source, sparse=sparse)
    trained.metadata["harvest"]["rows"] = len(store)
    trained.write_metadata()
    return trained


def default_sae_name(layer: int, config: SAEConfig, dense: bool) -> str:
    """``L<layer>-<architecture>`` (``-dense`` when a sparse run is harvested densely)."""
    return f"L{layer}-{config.architecture}" + ("-dense" if dense else "")


def train_run_sae(
    run: Any,
    layer: int,
    config: SAEConfig | None = None,
    *,
    name: str | None = None,
    examples: int = 4096,
    eval_examples: int = 1024,
    positions: str = "scored",
    dense: bool = False,
    progress: bool = True,
) -> TrainedSAE:
    """Train an SAE on layer ``layer`` of the trained model of ``run`` (a `workbench.runs.Run` or
    its folder) and save it in ``run.sae_folder(name)`` (default `default_sae_name`): activations of
    ``examples`` task examples at the scored positions (``positions="all"``: every position),
    harvested with the run's sparse method unless ``dense``; evaluated on ``eval_examples`` other
    examples. An existing SAE of that name raises ``FileExistsError`` (nothing is replaced)."""
    from workbench.runs import Run
    from workbench.train.checkpoint import load_model
    from workbench.train.config import sparse_plan

    run = run if isinstance(run, Run) else Run(Path(run))
    config = config or SAEConfig()
    model, train_config, step = load_model(run.path, config.torch_device())
    task = train_config.resolved_task()
    check_layer(layer, model)
    plan = None if dense else sparse_plan(train_config)
    name = name or default_sae_name(layer, config, dense and sparse_plan(train_config) is not None)
    source = _task_source(task, examples, HARVEST_SEED, positions)
    eval_source = _task_source(task, eval_examples, EVAL_SEED, positions)
    return train_model_sae(
        model,
        source,
        eval_source,
        layer,
        config,
        run.sae_folder(name),
        model_name=f"{run.experiment}/{run.name}",
        sparse=plan,
        extra={"run": f"{run.experiment}/{run.name}", "step": step, "dense": plan is None},
        progress=progress,
    )


def train_text_sae(
    path: str | Path,
    layer: int,
    folder: str | Path,
    config: SAEConfig | None = None,
    *,
    window: int = 128,
    eval_windows: int = 8,
    progress: bool = True,
) -> TrainedSAE:
    """Train an SAE on layer ``layer`` of the bundled MiniLM over the UTF-8 text file ``path``
    (windows of ``window`` tokens; the last ``eval_windows`` held out) and save it in ``folder``."""
    from workbench.models import MINILM_NAME, minilm

    config = config or SAEConfig()
    model, tokenizer = minilm()
    model = model.to(config.torch_device())
    check_layer(layer, model)
    everything = TextSource(Path(path), tokenizer, window)
    split = len(everything.windows) - eval_windows
    if split < 1:
        raise ValueError(
            f"eval_windows must leave a training window: {path} gives {len(everything.windows)} "
            f"windows of {window} tokens, got eval_windows={eval_windows}"
        )
    return train_model_sae(
        model,
        TextSource(Path(path), tokenizer, window, stop=split),
        TextSource(Path(path), tokenizer, window, start=split),
        layer,
        config,
        folder,
        model_name=MINILM_NAME,
        extra={"model": MINILM_NAME},
        progress=progress,
    )


@dataclass
class Subject:
    """What an SAE was trained on, loaded again: the model, the attention it ran with, and a
    held-out source (`subject`)."""

    model: nn.Module
    sparse: SparsePlan | None
    source: Source


def subject(trained: TrainedSAE, *, examples: int = 1024, seed: int = EVAL_SEED) -> Subject:
    """The model, sparse plan and held-out source of a saved SAE: the run's model and task
    (``examples`` examples drawn with ``seed``) or MiniLM and the held-out windows of its text."""
    source_info = trained.metadata["harvest"]["source"]
    if source_info["kind"] == "text":
        from workbench.models import minilm

        model, tokenizer = minilm()
        held_out = trained.metadata["metrics"]["eval_source"]
        return Subject(
            model,
            None,
            TextSource(
                Path(held_out["path"]), tokenizer, held_out["window"], start=held_out["start"]
            ),
        )
    from workbench.train.checkpoint import load_model
    from workbench.train.config import sparse_plan

    model, train_config, _ = load_model(run_of(trained).path)
    plan = None if trained.metadata["dense"] else sparse_plan(train_config)
    task = train_config.resolved_task()
    return Subject(model, plan, _task_source(task, examples, seed, source_info["positions"]))


def run_of(trained: TrainedSAE) -> Any:
    """The run an SAE of `train_run_sae` belongs to: the folder holding its ``saes/`` folder (so
    run folders can move)."""
    from workbench.runs import SAES, Run, is_run

    run = trained.folder.parent.parent
    if trained.folder.parent.name != SAES or not is_run(run):
        raise ValueError(f"{trained.folder} is not in the saes/ folder of a run")
    return Run(run)


def evaluate_saved(
    folder: str | Path, *, examples: int = 1024, seed: int = EVAL_SEED, progress: bool = False
) -> dict[str, Any]:
    """`evaluate` the SAE saved in ``folder`` on fresh held-out rows (``examples`` task examples
    drawn with ``seed``; for text, the held-out windows), with the attention it was harvested
    with."""
    trained = load_sae(folder)
    found = subject(trained, examples=examples, seed=seed)
    return evaluate(trained, found.model, found.source, sparse=found.sparse, progress=progress)


def check_layer(layer: int, model: nn.Module) -> None:
    from workbench.attention import model_size

    n_layers = model_size(model)[0]
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
        raise ValueError(f"layer must be an integer in [0, {n_layers - 1}], got {layer!r}")


def hook_z_width(model: nn.Module) -> int:
    """``d_in = n_heads * d_head`` of a TransformerLens / TransformerBridge or Hugging Face model."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return int(cfg.n_heads * cfg.d_head)
    return int(model.config.get_text_config().hidden_size)


def _task_source(task: ToyTask, examples: int, seed: int, positions: str) -> TaskSource:
    return TaskSource(task, examples, seed=seed, positions=positions)  # type: ignore[arg-type]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

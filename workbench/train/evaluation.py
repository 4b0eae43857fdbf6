"""Evaluations during training: one captured forward per chunk of the evaluation batch
(`workbench.capture`) gives the loss, the task metric and every registered evaluation metric
(`eval_metric`), and the trace of the trained model written into its run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from toy_tasks.base import Batch, ToyTask
from toy_tasks.classification import sequence_relevance
from workbench.attention import model_size
from workbench.capture import LayerCapture, capturing
from workbench.train.config import TrainConfig, sparse_plan
from workbench.train.data import TrainingData
from workbench.train.losses import task_loss, task_metrics
from workbench.train.registry import (
    POOLED_PERCENTILES,
    EvalRows,
    eval_metric,
    get_eval_metric,
)

TRACE_PS = (0.9,)
EVAL_CHUNK_TOKENS = 2**15
"""Evaluation forwards run on chunks of at most this many tokens (at least one example): the
activation memory of an evaluation (a model's ``[batch, heads, seq, seq]`` scores) stays bounded
whatever ``eval_batch_size``."""
FINAL_TRACE = "final"
"""Name of the trace of the trained model written into the run (`Run.load_trace`)."""
FINAL_TRACE_EXAMPLES = 8
FINAL_TRACE_BYTES = 16 * 2**20
"""Bound on the patterns of the final trace (fewer examples on long sequences)."""


@eval_metric("attention")
def attention_rows(capture: LayerCapture, batch: Batch, config: TrainConfig) -> EvalRows:
    """``attention``: mass on the relevant positions, entropy and top-0.9 budget ``k_0.9`` of the
    attention the layer used; with a sparse method also ``attention_dense``: the same of the dense
    softmax of the same q and k (equal on the layers that attend densely)."""
    from workbench.trace import TraceConfig, layer_statistics

    relevant = query_rows(config.resolved_task(), batch)[1]

    def named(dense: bool) -> dict[str, torch.Tensor]:
        stats = layer_statistics(
            capture, TraceConfig(ps=TRACE_PS), relevant_positions=relevant, dense=dense
        )
        return {
            "relevant_mass": stats["relevant_mass"],
            "entropy": stats["entropy"],
            "k_0.9": stats["top_p_budget"][..., TRACE_PS.index(0.9)].float(),
        }

    rows = {"attention": named(dense=False)}
    if config.sparse is not None:
        rows["attention_dense"] = named(dense=True)
    return EvalRows(capture.layer, rows)


@eval_metric("stability")
def stability_rows(capture: LayerCapture, batch: Batch, config: TrainConfig) -> EvalRows:
    """``stability``: `workbench.metrics.stability.row_stability` (softmax Jacobian norms of the
    dense and of the used attention, the top-k margin)."""
    from workbench.metrics.stability import row_stability

    return EvalRows(capture.layer, {"stability": row_stability(capture)})


@contextlib.contextmanager
def precision_context(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA with ``mixed_precision``, else nothing."""
    with contextlib.ExitStack() as stack:
        if config.mixed_precision and device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        yield


def eval_chunks(batch: Batch) -> list[Batch]:
    """``batch`` in consecutive chunks of at most `EVAL_CHUNK_TOKENS` tokens."""
    return batch.split(max(1, EVAL_CHUNK_TOKENS // batch.inputs.shape[1]))


def evaluate(
    model: nn.Module, task: ToyTask, batch: Batch, config: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """``eval_loss``, the task metric and the ``eval_metrics`` of ``config`` on ``batch``: one
    captured forward per chunk (`workbench.capture`) gives the outputs and every metric."""
    metrics = {name: get_eval_metric(name) for name in config.eval_metrics}
    plan = sparse_plan(config)
    outputs, rows = [], []
    with evaluation_mode(model), torch.no_grad(), precision_context(config, device):
        for chunk in eval_chunks(batch):
            chunk_rows: list[EvalRows] = []

            def measure(capture: LayerCapture, chunk: Batch = chunk, into=chunk_rows) -> None:
                into.extend(metric(capture, chunk, config) for metric in metrics.values())

            with contextlib.ExitStack() as stack:
                if metrics or plan is not None:  # else the model's own forward, bitwise
                    stack.enter_context(capturing(model, sparse=plan, on_layer=measure))
                outputs.append(model(chunk.inputs).float())
            rows.append(chunk_rows)
    outputs = torch.cat(outputs)
    result: dict[str, Any] = {"eval_loss": task_loss(task, outputs, batch).item()}
    weights = query_rows(task, batch)[0]
    return result | task_metrics(task, outputs, batch) | reduce_rows(rows, weights)


def query_rows(task: ToyTask, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The query rows the attention metrics average over, ``[batch, seq]`` bool, and the relevant
    positions of each row ``[batch, seq, R]``: the scored positions and their relevance, or for a
    classification task every row and the label's relevance (a pooled classifier reads every
    row; `toy_tasks.classification.sequence_relevance`)."""
    if task.kind == "classification":
        return torch.ones_like(batch.loss_mask), sequence_relevance(batch)
    return batch.loss_mask, batch.relevant_positions


def reduce_rows(chunks: list[list[EvalRows]], weights: torch.Tensor) -> dict[str, Any]:
    """``{group: {statistic: [layer][head]}}``: the per-row values of every chunk (each a list of
    per-layer `EvalRows`) concatenated along the batch and averaged over the positions with
    ``weights`` ``[batch, seq]`` (e.g. a batch's ``loss_mask``), skipping non-finite values; and
    ``{group: {statistic: {"q<level>": value}}}`` of the pooled values (`pooled_percentiles`)."""
    collected: dict[str, dict[str, dict[int, list[torch.Tensor]]]] = {}
    for chunk in chunks:
        for layer_rows in chunk:
            for group, statistics in layer_rows.rows.items():
                for statistic, values in statistics.items():
                    layers = collected.setdefault(group, {}).setdefault(statistic, {})
                    layers.setdefault(layer_rows.layer, []).append(values)
    result: dict[str, Any] = {}
    for group, statistics in collected.items():
        result[group] = {}
        for statistic, layers in statistics.items():
            means = []
            for layer in sorted(layers):
                values = torch.cat(layers[layer]).double()  # [batch, heads, seq]
                w = weights[:, None, :].double().to(values.device) * torch.isfinite(values)
                total = (values.nan_to_num(posinf=0.0, neginf=0.0) * w).sum(dim=(0, 2))
                means.append((total / w.sum(dim=(0, 2))).tolist())
            result[group][statistic] = means
    return result | pooled_percentiles([rows.pooled for chunk in chunks for rows in chunk])


def pooled_percentiles(pooled: list[dict[str, dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """``{group: {statistic: {"q<level>": value}}}``: percentiles (`POOLED_PERCENTILES`) of the
    finite values of every `EvalRows.pooled` entry of the evaluation (None when none is
    finite)."""
    collected: dict[str, dict[str, list[torch.Tensor]]] = {}
    for groups in pooled:
        for group, statistics in groups.items():
            for statistic, values in statistics.items():
                collected.setdefault(group, {}).setdefault(statistic, []).append(values.flatten())
    result: dict[str, Any] = {}
    for group, statistics in collected.items():
        result[group] = {}
        for statistic, parts in statistics.items():
            values = torch.cat(parts).double().cpu().numpy()
            values = values[np.isfinite(values)]
            levels = np.percentile(values, POOLED_PERCENTILES) if values.size else None
            result[group][statistic] = {
                f"q{level}": None if levels is None else float(value)
                for level, value in zip(
                    POOLED_PERCENTILES,
                    levels if levels is not None else POOLED_PERCENTILES,
                    strict=True,
                )
            }
    return result


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside, ``model.train()`` on leaving (also on errors)."""
    model.eval()
    try:
        yield
    finally:
        model.train()


def training_set_metrics(model: nn.Module, data: TrainingData) -> dict[str, float]:
    """Loss and task metric on the first ``eval_batch_size`` examples of the fixed training set,
    keys suffixed ``_train`` (empty without a fixed set)."""
    if data.fixed is None:
        return {}
    config = data.config.replace(eval_metrics=())
    metrics = evaluate(model, data.task, data.fixed_head, config, data.device)
    return {f"{name}_train": value for name, value in metrics.items()}


def final_trace(model: nn.Module, batch: Batch, config: TrainConfig) -> Any:
    """`workbench.trace.Trace` of the trained model (the attention it uses, sparse or not) on the
    first examples of ``batch``: statistics, relevant mass and patterns of every layer and head,
    as many examples (at most `FINAL_TRACE_EXAMPLES`) as keep the patterns under
    `FINAL_TRACE_BYTES` (none when one example is larger: statistics only)."""
    from workbench.trace import TraceConfig, estimate_pattern_bytes, trace

    n_layers, n_heads = model_size(model)
    seq = batch.inputs.shape[1]
    per_example = estimate_pattern_bytes(1, n_heads, seq, seq, n_layers, TraceConfig())
    count = min(FINAL_TRACE_EXAMPLES, batch.batch_size, FINAL_TRACE_BYTES // per_example)
    patterns = count > 0
    head = batch.head(max(count, 1))
    plan = sparse_plan(config)
    return trace(
        model,
        head.inputs,
        TraceConfig(patterns=patterns, ps=(0.5, 0.9), max_pattern_bytes=FINAL_TRACE_BYTES),
        relevant_positions=query_rows(config.resolved_task(), head)[1],
        sparse=None if plan is None else plan.method,
        sparse_layers=None if plan is None else plan.layers,
        sparse_block_size=64 if plan is None else plan.block_size,
    )

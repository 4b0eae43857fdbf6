"""``workbench trace`` and ``workbench sparsify-eval``: a model's attention statistics, and sparse
methods installed in it against dense attention, on the bundled MiniLM, a random toy model or a
trained run's model (heavy packages are imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli_options import parse_method_settings

TextFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Instead of --text: a UTF-8 file with one text per line (blank lines skipped), one "
        "padded batch (each example attended and traced as if alone).",
    ),
]
"""``--text-file`` of the MiniLM commands (`_read_texts`)."""


def trace_command(
    model: Annotated[str, typer.Option(help="'minilm' (the bundled MiniLM) or 'toy'.")] = "toy",
    text: Annotated[
        str, typer.Option(help="Text for --model minilm.")
    ] = "Sparse attention keeps the keys that matter.",
    text_file: TextFileOption = None,
    task: Annotated[str, typer.Option(help="Toy task for --model toy.")] = "assoc_recall",
    run: Annotated[
        str | None,
        typer.Option(
            help="Instead of --model: a trained run (its folder, or a config-hash prefix under "
            "--runs), its newest checkpoint on its first --examples evaluation examples, with "
            "their relevant positions, under the run's own sparse method if it trained with one."
        ),
    ] = None,
    runs: Annotated[Path, typer.Option(help="Root of the run store (for --run).")] = Path("runs"),
    examples: Annotated[int, typer.Option(min=1, help="Evaluation examples of --run traced.")] = 8,
    dense: Annotated[
        bool, typer.Option(help="Trace a sparse run's model with dense attention.")
    ] = False,
    method: Annotated[
        str | None,
        typer.Option(
            help="Trace the model while this registered sparse method runs (statistics of the "
            "attention it uses, beside the dense softmax of the same q and k); its settings for "
            "short inputs (short_input_hyper_parameters) apply."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Hyper-parameter of --method, METHOD.KEY=VALUE (repeatable)."),
    ] = None,
    sparse_layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated layers where --method runs (default: every layer)."),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Block size of --method's layouts.")] = 16,
    out: Annotated[
        Path,
        typer.Option(
            help="Output root: files go to OUT/minilm, OUT/toy-<task> or OUT/<experiment>-<hash>."
        ),
    ] = Path("runs/trace"),
    seed: Annotated[int, typer.Option(help="Seed of the toy model and task sample.")] = 0,
    stability: Annotated[
        bool,
        typer.Option(
            help="Also record each row's softmax-stability statistics (Jacobian norms, top-k "
            "margin; TraceConfig(stability=True))."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the files of an earlier trace.")] = False,
) -> None:
    """Trace attention statistics of a model and write trace.{safetensors,json,html}."""
    from rich.console import Console
    from rich.table import Table

    from workbench.io import write_figure
    from workbench.trace import TraceConfig, trace
    from workbench.viz.trace import trace_figure

    if model not in ("minilm", "toy"):
        raise typer.BadParameter("expected 'minilm' or 'toy'", param_hint="--model")
    sparse = _sparse_options(method, settings, sparse_layers, block_size)
    if run is not None:
        network, inputs, relevant, tokens, own_method, found = _run_inputs(run, runs, examples)
        folder = out / f"{found.experiment}-{found.name}"
        sparse = {} if dense else sparse or own_method
    else:
        folder = _output_folder(out, model, task)
        if model == "minilm":
            texts = [text] if text_file is None else _read_texts(text_file)
            inputs, tokens, network = _minilm_tokens(texts)
            relevant = None
        else:
            inputs, relevant, tokens, network = _toy_inputs(task, seed)
    if not overwrite:
        _refuse_to_overwrite(folder, ["trace.safetensors", "trace.json", "trace.html"])
    try:
        result = trace(
            network,
            inputs,
            TraceConfig(stability=stability),
            relevant_positions=relevant,
            tokens=tokens,
            **sparse,
        )
    except (ValueError, NotImplementedError) as error:
        raise typer.BadParameter(
            str(error), param_hint="--method / --set / --sparse-layers"
        ) from None
    title = "attention used"
    if sparse:
        title += f" under {sparse['sparse'].name} {sparse['sparse'].hyper_parameters()}"
    shown = {"entropy": "entropy", "max_weight": "max weight", "k_0.9": "k_0.9"}
    shown |= {"relevant_mass": "relevant mass"} | (
        {"jacobian_norm": "||J||_2"} if stability else {}
    )
    table = Table("layer", "head", *shown.values(), title=title)
    for layer in sorted(result.stats):
        means = {
            name: result.statistic(layer, name).nanmean(dim=(0, 2))
            for name in shown
            if name != "relevant_mass"
        }
        relevant_mass = result.stats[layer].get("relevant_mass")
        if relevant_mass is not None:  # mean over the rows that have relevant positions
            rows = (relevant >= 0).any(-1).unsqueeze(1).expand_as(relevant_mass)
            means["relevant_mass"] = (relevant_mass * rows).sum((0, 2)) / rows.sum((0, 2))
        for index, head in enumerate(result.heads):
            cells = [f"{means[name][index]:.3f}" if name in means else "-" for name in shown]
            table.add_row(str(layer), str(head), *cells)
    Console().print(table)
    result.save(folder / "trace")
    write_figure(trace_figure(result), folder / "trace.html")
    typer.echo(
        f"wrote {folder / 'trace.safetensors'}, {folder / 'trace.json'} and {folder / 'trace.html'}"
    )


def default_methods() -> list[str]:
    """The methods `workbench sparsify-eval` compares by default: every registered method that
    needs no calibration (`workbench.sparse.names()`, less those with ``needs_calibration``)."""
    import workbench.sparse

    return workbench.sparse.installable()


MINILM_TEXT = (
    "Sparse attention methods keep, for every query, only the keys that are expected to matter "
    "and skip the rest. Some choose fixed patterns such as a window of recent tokens and a few "
    "attention sinks at the start of the sequence; others look at the queries and keys and pick "
    "the blocks or single tokens with the largest scores, or the smallest set of tokens that "
    "holds most of the softmax mass. Whether the kept keys are the right ones shows in three "
    "places: the share of the dense attention that falls inside the selection, the error of the "
    "layer's output, and the change of the model's final representation. Long inputs make the "
    "differences between methods visible, because a short sentence fits in a single block and "
    "every method then keeps all of it."
)
"""Default ``--text`` of ``sparsify-eval --model minilm``: ~170 tokens, several blocks of 16."""

DENSE_TOLERANCE = 1e-6
"""A method whose kept fraction is within this of 1 kept everything (a warning says so)."""


def sparsify_eval_command(
    model: Annotated[str, typer.Option(help="'toy' (random model, toy task) or 'minilm'.")] = "toy",
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated registered methods (`workbench.sparse.names()`; default: every "
            "one that needs no calibration)."
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layer indices (default: every layer).")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Method hyper-parameter, METHOD.KEY=VALUE (repeatable; applied over the "
            "method's settings for short inputs, its short_input_hyper_parameters).",
        ),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Block size of the layouts.")] = 16,
    task: Annotated[str, typer.Option(help="Toy task for --model toy.")] = "assoc_recall",
    text: Annotated[
        str, typer.Option(help="Text for --model minilm (default: a paragraph of ~170 tokens).")
    ] = MINILM_TEXT,
    text_file: TextFileOption = None,
    out: Annotated[
        Path, typer.Option(help="Output root: files go to OUT/minilm or OUT/toy-<task>.")
    ] = Path("runs/sparsify-eval"),
    seed: Annotated[int, typer.Option(help="Seed of the toy model and task sample.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace the files of an earlier run.")] = False,
) -> None:
    """Install each method into a model and compare it with dense attention: density, attention
    recall, output error, end-to-end KL (logits) or cosine (MiniLM), toy-task accuracy delta.
    Writes results.json and fidelity.html."""
    from rich.console import Console
    from rich.table import Table

    import workbench.sparse
    from workbench.io import atomic_write_json, write_figure
    from workbench.metrics.fidelity import fidelity
    from workbench.viz.fidelity import fidelity_figure

    if model not in ("minilm", "toy"):
        raise typer.BadParameter("expected 'minilm' or 'toy'", param_hint="--model")
    out = _output_folder(out, model, task)
    if not overwrite:
        _refuse_to_overwrite(out, ["results.json", "fidelity.html"])
    hyper_parameters = parse_method_settings(settings or [])
    try:
        chosen = [
            workbench.sparse.short_input(name, **hyper_parameters.get(name, {}))
            for name in (default_methods() if methods is None else methods.split(","))
        ]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--methods / --set") from None
    extra: dict[str, Any] = {}
    if model == "toy":
        _, batch, network = _toy_batch(task, seed)
        inputs, extra = batch.inputs, {"targets": batch.targets, "loss_mask": batch.loss_mask}
    else:
        texts = [text] if text_file is None else _read_texts(text_file)
        inputs, _, network = _minilm_tokens(texts)
    try:
        layer_list = None if layers is None else [int(layer) for layer in layers.split(",")]
        reports = [
            fidelity(
                network, inputs, method, layers=layer_list, block_size=block_size, **extra
            ).to_dict()
            for method in chosen
        ]
    except (ValueError, NotImplementedError) as error:
        raise typer.BadParameter(str(error), param_hint="--layers / --methods") from None
    accuracy = any(report["accuracy_delta"] is not None for report in reports)
    columns = ["method", "density", "recall", "local error", "end-to-end"]
    table = Table(*columns, *(["accuracy delta"] if accuracy else []))
    for report in reports:
        end_to_end = (
            f"KL {report['kl']:.4f}" if report["kl"] is not None else f"cos {report['cosine']:.4f}"
        )
        cells = [
            report["method"],
            f"{report['mean_density']:.3f}",
            f"{report['mean_recall']:.3f}",
            f"{report['mean_local_output_error']:.3f}",
            end_to_end,
        ]
        if accuracy:
            cells.append(f"{report['accuracy_delta']:+.3f}")
        table.add_row(*cells)
    console = Console()
    console.print(table)
    for report in reports:
        if report["mean_density"] >= 1.0 - DENSE_TOLERANCE:
            console.print(
                f"[yellow]warning: {report['method']} kept every visible entry (density "
                f"{report['mean_density']:.3f}): the input is too short for its settings "
                f"({report['hyper_parameters']}, block size {block_size}); use a longer input "
                "or smaller settings[/yellow]"
            )
    summary = {"model": model, "task": task if model == "toy" else None, "reports": reports}
    atomic_write_json(out / "results.json", summary)
    figure = fidelity_figure(reports, title=f"sparse-attention fidelity ({model})")
    write_figure(figure, out / "fidelity.html")
    typer.echo(f"wrote {out / 'results.json'} and {out / 'fidelity.html'}")


def _output_folder(root: Path, model: str, task: str) -> Path:
    """Where a command writes the outputs of one model: ``root/minilm`` or ``root/toy-<task>``."""
    return root / ("minilm" if model == "minilm" else f"toy-{task}")


def _refuse_to_overwrite(folder: Path, names: list[str]) -> None:
    """``BadParameter`` when ``folder`` already holds one of ``names`` (nothing is replaced
    silently: pass --overwrite or another --out)."""
    existing = [name for name in names if (folder / name).exists()]
    if existing:
        raise typer.BadParameter(
            f"{folder} already holds {', '.join(existing)}: pass --overwrite to replace them, "
            "or another --out",
            param_hint="--out",
        )


def _sparse_options(
    method: str | None, settings: list[str] | None, layers: str | None, block_size: int
) -> dict[str, Any]:
    """`workbench.trace.trace`'s sparse arguments from the trace command's options (none without
    ``--method``)."""
    import workbench.sparse

    if method is None:
        if settings or layers is not None:
            raise typer.BadParameter("needs --method", param_hint="--set / --sparse-layers")
        return {}
    hyper_parameters = parse_method_settings(settings or [])
    unknown = sorted(set(hyper_parameters) - {method})
    if unknown:
        raise typer.BadParameter(f"--method is {method!r}, not {unknown}", param_hint="--set")
    try:
        chosen = workbench.sparse.short_input(method, **hyper_parameters.get(method, {}))
        layer_list = None if layers is None else [int(layer) for layer in layers.split(",")]
    except ValueError as error:
        raise typer.BadParameter(
            str(error), param_hint="--method / --set / --sparse-layers"
        ) from None
    return {"sparse": chosen, "sparse_layers": layer_list, "sparse_block_size": block_size}


def _run_inputs(run: str, root: Path, examples: int) -> tuple[Any, ...]:
    """``(model, inputs, relevant positions, tokens, sparse, run)`` of a trained run: its newest
    checkpoint's model on the first ``examples`` of its evaluation examples (tokens named as the
    task names them; None for continuous inputs) and `workbench.trace.trace`'s arguments for the
    sparse method it trained with (``{}`` when it trained densely)."""
    from toy_tasks.base import token_labels
    from workbench.runs import resolve_run
    from workbench.train.checkpoint import load_model
    from workbench.train.data import evaluation_batch

    try:
        found = resolve_run(run, root)
        network, config, _ = load_model(found.path)
    except (ValueError, OSError) as error:
        raise typer.BadParameter(str(error), param_hint="--run") from None
    batch = evaluation_batch(config).head(examples)
    tokens = token_labels(config.resolved_task(), batch.inputs)
    own = {}
    if config.sparse is not None:
        own = {
            "sparse": config.sparse.build(),
            "sparse_layers": config.sparse.layers,
            "sparse_block_size": config.sparse.block_size,
        }
    return network, batch.inputs, batch.relevant_positions, tokens, own, found


def _read_texts(path: Path) -> list[str]:
    """The non-blank lines of ``path``; ``BadParameter`` when there are none."""
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise typer.BadParameter(str(error), param_hint="--text-file") from None
    texts = [text for text in texts if text]
    if not texts:
        raise typer.BadParameter(f"{path} holds no text", param_hint="--text-file")
    return texts


def _minilm_tokens(texts: list[str]) -> tuple[Any, list[list[str]], Any]:
    """The bundled MiniLM's inputs for ``texts`` (one padded batch), their tokens (``[batch][pos]``
    strings, as the tokenizer spells them, ``[PAD]`` included) and the model."""
    from workbench.models import minilm

    network, tokenizer = minilm()
    inputs = dict(tokenizer(texts, return_tensors="pt", padding=True))
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in inputs["input_ids"].tolist()]
    return inputs, tokens, network


def _toy_batch(task_name: str, seed: int) -> tuple[Any, Any, Any]:
    """The toy task, a batch of it (4 examples) and a small random-weights HookedTransformer."""
    import torch

    import toy_tasks
    from workbench.models import toy_model

    task = toy_tasks.get(task_name)
    if task.kind != "tokens":
        raise typer.BadParameter(f"{task_name} is not a token task", param_hint="--task")
    return task, task.sample(4, torch.Generator().manual_seed(seed)), toy_model(task, seed=seed)


def _toy_inputs(task_name: str, seed: int) -> tuple[Any, ...]:
    """``(inputs, relevant positions, tokens, model)`` of `_toy_batch`; the tokens as the task
    names them (``K3``, ``V17``, ...)."""
    from toy_tasks.base import token_labels

    task, batch, network = _toy_batch(task_name, seed)
    tokens = token_labels(task, batch.inputs)
    return batch.inputs, batch.relevant_positions, tokens, network

"""The ``workbench`` command line. Heavy packages are imported inside the commands, so that
``workbench --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from workbench.dashboard_commands import dashboard_command, report_command
from workbench.sae_commands import sae_app

if TYPE_CHECKING:
    from workbench.runs import Run

app = typer.Typer(
    help="Sparse-attention workbench.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts show brackets as typed: sparse=[null], .[ray]
)
tasks_app = typer.Typer(help="Toy tasks with ground-truth relevance.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
runs_app = typer.Typer(help="The run store: list and migrate run folders.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(sae_app, name="sae")


def _print_version(value: bool) -> None:
    if value:
        from workbench import __version__

        typer.echo(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Trace, sparsify and measure attention in transformers."""


@tasks_app.command("list")
def tasks_list() -> None:
    """List the registered toy tasks."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import toy_tasks

    table = Table("name", "kind", "seq_len", "description", "paper")
    for name, description, paper in toy_tasks.describe():
        task = toy_tasks.get(name)
        table.add_row(name, task.kind, str(task.seq_len), escape(description), escape(paper))
    Console().print(table)


def parse_overrides(settings: list[str]) -> dict[str, Any]:
    """``["n_pairs=8", "noise=0.1", "n_queries=None"]`` -> ``{"n_pairs": 8, "noise": 0.1, ...}``
    (values parsed as YAML scalars)."""
    import yaml

    overrides = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {setting!r}", param_hint="--set")
        overrides[key.strip()] = None if value.strip() == "None" else yaml.safe_load(value)
    return overrides


@tasks_app.command("sample")
def tasks_sample(
    name: Annotated[str, typer.Argument(help="Task name (see `workbench tasks list`).")],
    seed: Annotated[int, typer.Option(help="Seed of the torch.Generator.")] = 0,
    n: Annotated[int, typer.Option(min=1, help="Number of examples to print.")] = 1,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a task parameter, KEY=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Print examples of a task with their targets and ground-truth relevant positions."""
    import torch

    import toy_tasks

    try:
        task = toy_tasks.get(name, **parse_overrides(settings or []))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    batch = task.sample(n, torch.Generator().manual_seed(seed))
    typer.echo(f"{task.name} (seed {seed}): {task.to_dict()}")
    for index in range(n):
        typer.echo(f"\n--- example {index} ---")
        typer.echo(task.render(batch, index))


@tasks_app.command("overview")
def tasks_overview_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/tasks"),
    seed: Annotated[int, typer.Option(help="Seed of the toy-task samples.")] = 0,
) -> None:
    """Sample every toy task and write a summary of its ground-truth relevance and plotly
    figures (summary.json, figures/, index.html)."""
    from workbench.tasks_overview import tasks_overview

    summary = tasks_overview(out, seed=seed)
    for name, stats in summary["tasks"].items():
        typer.echo(
            f"{name:20s} seq_len {stats['seq_len']:4d}  scored {stats['scored_fraction']:.3f}  "
            f"ideal attention density {stats['ideal_density']:.3f}"
        )
    typer.echo(f"wrote {out / 'summary.json'} and {out / 'index.html'}")


TextFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Instead of --text: a UTF-8 file with one text per line (blank lines skipped), one "
        "padded batch (each example attended and traced as if alone).",
    ),
]
"""``--text-file`` of the MiniLM commands (`_read_texts`)."""


@app.command("trace")
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
            inputs, relevant, network = _toy_inputs(task, seed)
            tokens = [[str(token) for token in row] for row in inputs.tolist()]  # token ids
    if not overwrite:
        _refuse_to_overwrite(folder, ["trace.safetensors", "trace.json", "trace.html"])
    try:
        result = trace(
            network, inputs, TraceConfig(), relevant_positions=relevant, tokens=tokens, **sparse
        )
    except (ValueError, NotImplementedError) as error:
        raise typer.BadParameter(
            str(error), param_hint="--method / --set / --sparse-layers"
        ) from None
    title = "attention used"
    if sparse:
        title += f" under {sparse['sparse'].name} {sparse['sparse'].hyper_parameters()}"
    table = Table("layer", "head", "entropy", "max weight", "k_0.9", "relevant mass", title=title)
    for layer in sorted(result.stats):
        means = {
            name: result.statistic(layer, name).nanmean(dim=(0, 2))
            for name in ("entropy", "max_weight", "k_0.9")
        }
        relevant_mass = result.stats[layer].get("relevant_mass")
        if relevant_mass is not None:  # mean over the rows that have relevant positions
            rows = (relevant >= 0).any(-1).unsqueeze(1).expand_as(relevant_mass)
            means["relevant_mass"] = (relevant_mass * rows).sum((0, 2)) / rows.sum((0, 2))
        for index, head in enumerate(result.heads):
            cells = [f"{means[name][index]:.3f}" for name in means]
            table.add_row(str(layer), str(head), *cells, *["-"] * (4 - len(cells)))
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


def parse_method_settings(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["sink_window.window=8", "top_k.k=4"]`` -> ``{"sink_window": {"window": 8}, ...}``."""
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in parse_overrides(settings).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise typer.BadParameter(f"expected METHOD.KEY=VALUE, got {key!r}", param_hint="--set")
        grouped.setdefault(method, {})[name] = value
    return grouped


@app.command("sparsify-eval")
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
        batch, network = _toy_batch(task, seed)
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
    import torch

    import workbench.sparse
    from toy_tasks.base import token_labels
    from workbench.runs import resolve_run
    from workbench.train.checkpoint import load_model
    from workbench.train.data import evaluation_batch

    try:
        found = resolve_run(run, root)
        network, config, _ = load_model(found.path)
    except (ValueError, OSError) as error:
        raise typer.BadParameter(str(error), param_hint="--run") from None
    batch = evaluation_batch(config)
    batch = batch.take(torch.arange(min(examples, batch.batch_size)))
    tokens = token_labels(config.resolved_task(), batch.inputs)
    own = {}
    if config.sparse is not None:
        own = {
            "sparse": workbench.sparse.get(config.sparse.method, **config.sparse.hparams),
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


def _toy_batch(task_name: str, seed: int) -> tuple[Any, Any]:
    """A toy-task batch (4 examples) and a small random-weights HookedTransformer."""
    import torch

    import toy_tasks
    from workbench.models import toy_model

    task = toy_tasks.get(task_name)
    if task.kind != "tokens":
        raise typer.BadParameter(f"{task_name} is not a token task", param_hint="--task")
    return task.sample(4, torch.Generator().manual_seed(seed)), toy_model(task, seed=seed)


def _toy_inputs(task_name: str, seed: int) -> tuple[Any, Any, Any]:
    batch, network = _toy_batch(task_name, seed)
    return batch.inputs, batch.relevant_positions, network


SIGTERM_EXIT_CODE = 143
"""Exit status of ``workbench run`` stopped by SIGTERM (128 + 15, as a shell reports it)."""
RESUME_CHOICES = {"newest": True, "previous": "previous", "restart": False}
"""``workbench run --resume`` -> the ``resume`` argument of `workbench.train.train`."""


@app.command("run")
def run_command(
    name: Annotated[
        str | None,
        typer.Argument(help="Experiment name (see --list) or path to a YAML spec."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Run the small CPU variant of the spec.")] = False,
    where: Annotated[
        list[str] | None,
        typer.Option(
            help="Only a slice of the sweep: PATH=VALUES, VALUES comma-separated or a YAML list "
            "(task.seq_len=64,32; task.name=even_pairs; seed=0; sparse=[null]); repeat for "
            "several paths. The slice's runs are the whole spec's (same hashes); its analysis "
            "has a folder of its own."
        ),
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Root folder of the runs.")] = Path("runs"),
    list_: Annotated[bool, typer.Option("--list", help="List the experiments and exit.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Train this many runs at once, in separate processes.")
    ] = 1,
    train: Annotated[
        bool,
        typer.Option(
            help="--no-train: analyse the runs already there (finished ones, and the logged part "
            "of unfinished ones) without training."
        ),
    ] = True,
    resume: Annotated[
        str,
        typer.Option(
            help="How unfinished runs continue. newest: from their newest checkpoint (a damaged "
            "one fails the run; the others go on). previous: from the newest checkpoint that "
            "verifies, moving damaged newer ones into the run's replaced-<time>/. restart: "
            "afresh, moving their checkpoints and log into replaced-<time>/ (finished runs are "
            "reused either way; nothing is deleted)."
        ),
    ] = "newest",
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch CPU threads per training process (default: a quarter of the "
            "cores per worker, at least 1; with --executor ray: --cpus-per-run)."
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="Where the runs train. process: here, or --workers local processes (nothing "
            "extra needed). ray: each run a Ray task (the extra ray: pip install -e '.[ray]') on "
            "--address, or on a local cluster started for the sweep."
        ),
    ] = "process",
    address: Annotated[
        str | None,
        typer.Option(
            help="--executor ray: the cluster's address (auto: the one `ray start` runs here; "
            "ray://HOST:10001 through Ray Client). Default: RAY_ADDRESS if set, else a local "
            "cluster. The runs folder must be on a filesystem every node sees at the same path."
        ),
    ] = None,
    gpus_per_run: Annotated[
        float | None,
        typer.Option(help="--executor ray: GPUs per run (default 0; 0.25: four runs per GPU)."),
    ] = None,
    cpus_per_run: Annotated[
        float | None,
        typer.Option(help="--executor ray: CPUs per run (default 1)."),
    ] = None,
) -> None:
    """Train every run of an experiment (finished runs are reused) and write its analysis:
    runs/<name>/<hash>/{config.yaml, metrics.jsonl, results.json, figures/*.html}."""
    import logging

    from workbench.experiments import RunsFailed, load_spec, run_experiment, spec_names
    from workbench.experiments.runner import check_executor
    from workbench.termination import Terminated

    if list_:
        for spec in map(load_spec, spec_names()):
            runs, quick_runs = len(spec.configs()), len(spec.quick_variant().configs())
            typer.echo(f"{spec.name:16s} {runs:3d} runs ({quick_runs} with --quick)")
            typer.echo(f"    {spec.description}")
        return
    if name is None:
        raise typer.BadParameter("give an experiment name or --list", param_hint="NAME")
    if resume not in RESUME_CHOICES:
        choices = ", ".join(RESUME_CHOICES)
        raise typer.BadParameter(f"must be one of {choices}, got {resume!r}", param_hint="--resume")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = load_spec(name)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="NAME") from None
    try:
        slice_ = parse_where(where or [])
        (spec.quick_variant() if quick else spec).restricted(slice_)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--where") from None
    try:
        check_executor(executor, workers, address, cpus_per_run, gpus_per_run)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error)) from None
    except ModuleNotFoundError as error:  # --executor ray without Ray: say which extra
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        result = run_experiment(
            spec,
            quick=quick,
            where=slice_,
            runs_dir=runs_dir,
            workers=workers,
            train=train,
            resume=RESUME_CHOICES[resume],
            threads=threads,
            executor=executor,
            address=address,
            cpus_per_run=cpus_per_run,
            gpus_per_run=gpus_per_run,
        )
    except ConnectionError as error:  # --executor ray: no cluster at --address
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    except Terminated as error:
        typer.echo(
            f"stopped on SIGTERM or Ctrl-C ({error}); the same command continues the runs", err=True
        )
        raise typer.Exit(SIGTERM_EXIT_CODE) from None
    except RunsFailed as error:  # the other runs were trained; no analysis is written
        typer.echo(f"{len(error.failures)} of {error.total} runs failed:", err=True)
        for directory, failure in error.failures:
            typer.echo(f"run {directory} failed: {type(failure).__name__}: {failure}", err=True)
        raise typer.Exit(1) from None
    if train:
        counts = f"{result.n_trained} trained, {len(result.runs) - result.n_trained} reused"
    else:
        unfinished = sum(not run.finished for run in result.runs)
        counts = f"{unfinished} unfinished, {len(result.results.get('missing', []))} missing"
    typer.echo(f"{len(result.runs)} runs ({counts}) under {runs_dir / result.spec.name}")
    if result.headline is not None:
        _print_headline(result.headline)
    typer.echo(f"results: {result.results_path}")
    for figure in result.figures:
        typer.echo(f"figure: {figure}")


def parse_where(items: list[str]) -> dict[str, list[Any]]:
    """``["task.seq_len=64,32", "sparse=[null]"]`` -> ``{"task.seq_len": [64, 32], "sparse":
    [None]}``: each value read as YAML (a list in brackets, else comma-separated scalars).
    ``ValueError`` naming the item when it is not ``PATH=VALUES`` or a path repeats."""
    import yaml

    where: dict[str, list[Any]] = {}
    for item in items:
        path, equals, text = item.partition("=")
        path, text = path.strip(), text.strip()
        if not equals or not path or not text:
            raise ValueError(f"--where takes PATH=VALUES (e.g. task.seq_len=64,32), got {item!r}")
        if path in where:
            raise ValueError(f"--where names {path!r} twice")
        try:
            if text.startswith("["):
                values = yaml.safe_load(text)
            else:
                values = [yaml.safe_load(part) for part in text.split(",")]
        except yaml.YAMLError:
            raise ValueError(f"--where {item!r}: the values are not YAML") from None
        where[path] = values
    return where


def _print_headline(headline: Any) -> None:
    """A `workbench.experiments.Headline` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*headline.columns, title=headline.title, caption=headline.note or None)
    for row in headline.rows:
        table.add_row(*row)
    Console().print(table)


def _figure_groups(folder: Path) -> dict[Path, list[Run]]:
    """``{figures folder: runs}``: a run folder alone; else every analysis of the experiment
    ``folder`` with the runs its ``results.json`` names; else every run in ``folder``."""
    from workbench.runs import Run, experiment_contents, is_run

    if is_run(folder):
        return {folder / "figures": [Run(folder)]}
    analyses, runs = experiment_contents(folder)
    grouped = {}
    for analysis in analyses:
        names = set(analysis.run_names()) or {run.name for run in runs}
        grouped[analysis.figures_dir] = [run for run in runs if run.name in names]
    return grouped or {folder / "figures": runs}


@app.command("stability")
def stability_command(
    run_dir: Annotated[
        Path, typer.Argument(help="An experiment's folder (runs/<name>) or a run folder.")
    ],
) -> None:
    """Write softmax-stability curves over training (runs trained with eval_metrics: [stability]) as
    figures/stability_*.html next to the experiment's figures."""
    from workbench.experiments.analyses import method_label
    from workbench.io import write_figure
    from workbench.viz.stability import stability_figures

    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a folder", param_hint="RUN_DIR")
    written = []
    for out_dir, runs in _figure_groups(run_dir).items():
        records = {run.name: run.metrics() for run in runs}
        groups = {run.name: method_label(run.config() or {}) for run in runs}
        for name, figure in stability_figures(records, groups).items():
            written.append(write_figure(figure, out_dir / f"{name}.html"))
    if not written:
        typer.echo(f"no stability metrics under {run_dir} (train with eval_metrics: [stability])")
        raise typer.Exit(1)
    for path in written:
        typer.echo(f"figure: {path}")


@runs_app.command("list")
def runs_list(
    root: Annotated[Path, typer.Argument(help="Root of the run folders.")] = Path("runs"),
) -> None:
    """One line per run under ROOT/<experiment>/<hash>: status, task, method, seed, last step and
    the last evaluation."""
    from rich.console import Console
    from rich.table import Table

    from workbench.runs import RunStore

    rows = RunStore(root).index()
    if not rows:
        typer.echo(f"no runs under {root}")
        raise typer.Exit(1)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@runs_app.command("migrate")
def runs_migrate(
    folder: Annotated[
        Path, typer.Argument(help="An experiment's folder (runs/<name>, or a results folder).")
    ],
    spec: Annotated[
        str | None,
        typer.Option(help="The spec the runs belong to (default: the folder's own analyses)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would change; change nothing.")] = False,
    pin_parametrisation: Annotated[
        bool,
        typer.Option(
            help="The runs predate input_init / readout_init: write the TransformerLens "
            "initialisation they were trained with into their continuous-task configs first."
        ),
    ] = False,
) -> None:
    """Rename run folders written under the older config schema to their hashes in today's, and
    rewrite the analyses there (old files kept as *.before-migration.*; nothing is deleted)."""
    from workbench.experiments import load_spec
    from workbench.experiments.migrate import describe, migrate

    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="FOLDER")
    try:
        migration = migrate(
            folder,
            None if spec is None else load_spec(spec),
            dry_run=dry_run,
            pin_parametrisation=pin_parametrisation,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="FOLDER / --spec") from None
    typer.echo(("(dry run) " if dry_run else "") + describe(migration))


app.command("dashboard")(dashboard_command)
app.command("report")(report_command)


if __name__ == "__main__":  # python -m workbench.cli
    app()

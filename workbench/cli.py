"""The ``workbench`` command line. Heavy packages are imported inside the commands, so that
``workbench --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from workbench.cli_options import parse_overrides
from workbench.dashboard_commands import dashboard_command, report_command
from workbench.model_commands import sparsify_eval_command, trace_command
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


app.command("trace")(trace_command)
app.command("sparsify-eval")(sparsify_eval_command)

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

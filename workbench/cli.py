"""The ``workbench`` command line. Heavy packages are imported inside the commands, so that
``workbench --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Sparse-attention workbench.", no_args_is_help=True, add_completion=False)
tasks_app = typer.Typer(help="Toy tasks with ground-truth relevance.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


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
    from rich.table import Table

    import toy_tasks

    table = Table("name", "kind", "seq_len", "description")
    for name in toy_tasks.names():
        task = toy_tasks.get(name)
        description = (type(task).__doc__ or "").strip().splitlines()[0]
        table.add_row(name, task.kind, str(task.seq_len), description)
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the toy-task samples.")] = 0,
) -> None:
    """The default job: sample every toy task and write a summary and plotly figures."""
    from workbench.demo import run_demo

    summary = run_demo(out, seed=seed)
    for name, stats in summary["tasks"].items():
        typer.echo(
            f"{name:20s} seq_len {stats['seq_len']:4d}  scored {stats['scored_fraction']:.3f}  "
            f"ideal attention density {stats['ideal_density']:.3f}"
        )
    typer.echo(f"wrote {out / 'summary.json'} and {out / 'index.html'}")

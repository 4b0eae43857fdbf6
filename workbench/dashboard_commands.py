"""``workbench dashboard`` and ``workbench report``: the interactive dashboard over a run store and
the static report of its figures (Dash and the figure code are imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

LOCALHOST = "127.0.0.1"


def dashboard_command(
    runs_dir: Annotated[
        Path, typer.Argument(help="Root of the run folders (or a folder of results folders).")
    ] = Path("runs"),
    host: Annotated[
        str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")
    ] = LOCALHOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8050,
    traces: Annotated[
        list[Path] | None,
        typer.Option("--trace", help="A trace file to show as well (repeatable)."),
    ] = None,
    examples: Annotated[
        int, typer.Option(min=1, help="Evaluation examples a run's model is captured on.")
    ] = 4,
    sae_examples: Annotated[
        int, typer.Option(min=1, help="Held-out examples of an SAE's feature report.")
    ] = 256,
    debug: Annotated[
        bool, typer.Option(help="Dash's debug mode (reloads, error pop-ups).")
    ] = False,
) -> None:
    """Serve the interactive dashboard: the run index and training curves, attention patterns
    with a sparse method's live selection, methods compared on one model, SAE features."""
    try:
        from workbench.dashboard.app import serve
    except ImportError as error:
        typer.echo(f"the dashboard needs Dash: pip install -e '.[dashboard]' ({error})", err=True)
        raise typer.Exit(1) from None
    if not runs_dir.is_dir():
        raise typer.BadParameter(f"{runs_dir} is not a folder", param_hint="RUNS_DIR")
    if host != LOCALHOST:
        typer.echo(
            f"warning: serving on {host}: whoever reaches this address reads the runs", err=True
        )
    typer.echo(f"dashboard of {runs_dir} at http://{host}:{port} (Ctrl+C stops it)")
    try:
        serve(
            runs_dir, host=host, port=port, debug=debug, traces=traces or (), examples=examples,
            sae_examples=sae_examples,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, TypeError) as error:
        raise typer.BadParameter(str(error)) from None


def report_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder, or a folder of runs (an experiment's, a store's).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    examples: Annotated[
        int, typer.Option(min=1, help="Evaluation examples the model is captured on.")
    ] = 4,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated sparse methods compared (default: a few common ones)."),
    ] = None,
) -> None:
    """Write the dashboard's figures of RUN_DIR as one self-contained HTML file (plotly.js
    inlined: it opens with no network)."""
    from workbench.dashboard.report import DEFAULT_METHODS, write_report

    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a folder", param_hint="RUN_DIR")
    chosen = DEFAULT_METHODS if methods is None else tuple(methods.split(","))
    try:
        path = write_report(run_dir, output, examples=examples, methods=chosen)
    except ValueError as error:  # the message names the option
        raise typer.BadParameter(str(error)) from None
    typer.echo(f"wrote {path}")

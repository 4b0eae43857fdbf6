"""``workbench sae train|eval|features``: attention-output SAEs from the command line (the heavy
packages are imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

sae_app = typer.Typer(
    help="Attention-output SAEs on hook_z (trained with sae-lens).", no_args_is_help=True
)

SHOWN_METRICS = (
    "l0", "fvu", "dead_fraction", "dense_fraction", "loss_clean", "loss_spliced", "loss_zero",
    "loss_recovered", "kl", "metric", "clean", "spliced",
)  # fmt: skip


@sae_app.command("train")
def train_command(
    run: Annotated[
        str | None,
        typer.Argument(help="A run folder, or a hash prefix of a run under --runs."),
    ] = None,
    layer: Annotated[int, typer.Option(help="The layer whose hook_z is encoded.")] = 0,
    text: Annotated[
        Path | None,
        typer.Option(help="Instead of a run: the bundled MiniLM over this UTF-8 text file."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where a MiniLM SAE goes (default runs/saes/minilm/NAME).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the SAE (default L<layer>-<arch>).")
    ] = None,
    architecture: Annotated[
        str, typer.Option(help="standard, topk, batchtopk or jumprelu.")
    ] = "topk",
    expansion: Annotated[int, typer.Option(help="d_sae = expansion * d_in.")] = 8,
    k: Annotated[int, typer.Option(help="Active features per row (topk, batchtopk).")] = 8,
    l1_coefficient: Annotated[float, typer.Option(help="L1 weight (standard).")] = 5.0,
    l0_coefficient: Annotated[float, typer.Option(help="L0 weight (jumprelu).")] = 1.0,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the shuffling.")] = 0,
    examples: Annotated[int, typer.Option(help="Task examples harvested (runs).")] = 4096,
    eval_examples: Annotated[int, typer.Option(help="Held-out task examples (runs).")] = 1024,
    positions: Annotated[str, typer.Option(help="Rows at 'scored' positions or 'all'.")] = "scored",
    dense: Annotated[
        bool, typer.Option(help="Harvest a sparse run's model with dense attention.")
    ] = False,
    window: Annotated[int, typer.Option(help="Tokens per window (--text).")] = 128,
    eval_windows: Annotated[int, typer.Option(help="Held-out windows (--text).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:<n>.")] = "auto",
    runs: Annotated[Path, typer.Option(help="Root of the run store.")] = Path("runs"),
) -> None:
    """Harvest hook_z of one layer, train an SAE with sae-lens, evaluate it on held-out rows and
    save it (sae-lens's format) in the run's saes/ folder, with its figures."""
    from workbench.sae import SAEConfig, train_run_sae, train_text_sae
    from workbench.sae.pipeline import default_sae_name

    config = _checked(
        lambda: SAEConfig(
            architecture=architecture, expansion=expansion, k=k, l1_coefficient=l1_coefficient,
            l0_coefficient=l0_coefficient, lr=lr, batch_size=batch_size, steps=steps, seed=seed,
            device=device,
        )
    )  # fmt: skip
    if (run is None) == (text is None):
        raise typer.BadParameter("give a RUN or --text, not both", param_hint="RUN / --text")
    if text is not None:
        folder = out or Path("runs/saes/minilm") / (name or default_sae_name(layer, config, False))
        trained = _checked(
            lambda: train_text_sae(
                text, layer, folder, config, window=window, eval_windows=eval_windows
            )
        )
    else:
        found = _find_run(run, runs)
        trained = _checked(
            lambda: train_run_sae(
                found, layer, config, name=name, examples=examples, eval_examples=eval_examples,
                positions=positions, dense=dense,
            )
        )  # fmt: skip
    _print_metrics(trained.metadata["metrics"])
    for path in _write_training_figures(trained):
        typer.echo(f"figure: {path}")
    typer.echo(f"saved {trained.folder} (sae_lens.SAE.load_from_disk loads it)")


@sae_app.command("eval")
def eval_command(
    folder: Annotated[Path, typer.Argument(help="An SAE folder (<run>/saes/<name>).")],
    examples: Annotated[int, typer.Option(help="Fresh held-out task examples.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of those examples.")] = 2,
) -> None:
    """Evaluate a saved SAE again on fresh held-out rows: L0, FVU, dead and dense features, loss
    recovered when spliced, KL and the task metric."""
    from workbench.sae import evaluate_saved

    _check_sae_folder(folder)
    _print_metrics(_checked(lambda: evaluate_saved(folder, examples=examples, seed=seed)))


@sae_app.command("features")
def features_command(
    folder: Annotated[Path, typer.Argument(help="An SAE folder (<run>/saes/<name>).")],
    features: Annotated[
        list[int] | None,
        typer.Option("--feature", help="Features to show (repeatable; default the strongest)."),
    ] = None,
    top: Annotated[int, typer.Option(help="How many features when none are given.")] = 6,
    rows: Annotated[int, typer.Option(help="Top-activating rows per feature.")] = 8,
    examples: Annotated[int, typer.Option(help="Held-out task examples browsed.")] = 1024,
) -> None:
    """Browse an SAE's features on held-out rows: density, heads, source positions, task
    variables and top-activating examples, written as figures into the SAE's figures/ folder."""
    from rich.console import Console
    from rich.table import Table

    from workbench.io import write_figure
    from workbench.sae import feature_report, load_sae, subject, top_examples
    from workbench.viz import sae as figures

    _check_sae_folder(folder)
    trained = load_sae(folder)
    found = subject(trained, examples=examples)
    report = feature_report(
        trained.sae, found.model, found.source, trained.layer, sparse=found.sparse
    )
    chosen = features if features else report.strongest_features(top).tolist()
    d_sae = report.activations.shape[1]
    if any(not 0 <= feature < d_sae for feature in chosen):
        raise typer.BadParameter(f"features must be in [0, {d_sae - 1}]", param_hint="--feature")
    table = Table("feature", "frequency", "top head", "relevant share", "best variable match")
    for feature in chosen:
        table.add_row(*_feature_cells(report, feature))
    Console().print(table)
    typer.echo(_summary_line(report.summary()))
    out = trained.folder / "figures"
    written = [
        write_figure(figures.feature_density_figure(report.frequency), out / "density.html"),
        write_figure(
            figures.head_attribution_figure(
                report.head_attribution, chosen, head_norms=report.head_norms
            ),
            out / "heads.html",
        ),
        *(
            write_figure(figures.variable_match_figure(match), out / f"variable-{name}.html")
            for name, match in report.variables.items()
        ),
    ]
    for feature in chosen:
        shown = top_examples(
            report, trained.sae, found.model, found.source, trained.layer, feature, n=rows,
            sparse=found.sparse,
        )  # fmt: skip
        written.append(
            write_figure(
                figures.top_examples_figure(shown, feature), out / f"feature-{feature}.html"
            )
        )
    for path in written:
        typer.echo(f"figure: {path}")


def _checked(make: Any) -> Any:
    """``make()``, its ``ValueError`` / ``FileExistsError`` turned into a usage error."""
    try:
        return make()
    except (ValueError, FileExistsError) as error:
        raise typer.BadParameter(str(error)) from None


def _find_run(run: str, root: Path) -> Any:
    from workbench.runs import resolve_run

    try:
        return resolve_run(run, root)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="RUN") from None


def _check_sae_folder(folder: Path) -> None:
    from workbench.sae.training import METADATA

    if not (folder / METADATA).is_file():
        raise typer.BadParameter(f"{folder} holds no SAE (no {METADATA})", param_hint="FOLDER")


def _print_metrics(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value")
    for key in SHOWN_METRICS:
        value = metrics.get(key)
        if value is not None:
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _write_training_figures(trained: Any) -> list[Path]:
    from workbench.io import write_figure
    from workbench.viz.sae import sae_loss_figure

    curve = {trained.name: trained.metadata["loss_curve"]}
    return [write_figure(sae_loss_figure(curve), trained.folder / "figures" / "training.html")]


def _feature_cells(report: Any, feature: int) -> list[str]:
    head = int(report.head_attribution[feature].abs().argmax())
    share = "-" if report.relevant_share is None else f"{report.relevant_share[feature]:.2f}"
    matches = [
        (match.f1[feature].max().item(), name, match.values[match.f1[feature].argmax()].item())
        for name, match in report.variables.items()
    ]
    best = max(matches, default=None)
    return [
        str(feature),
        f"{report.frequency[feature]:.3f}",
        str(head),
        share,
        "-" if best is None else f"{best[1]}={best[2]} (F1 {best[0]:.2f})",
    ]


def _summary_line(summary: dict[str, Any]) -> str:
    parts = [f"{summary['alive']} of {summary['features']} features alive"]
    parts += [
        f"{entry['variable']}: {entry['dedicated']}/{entry['values']} values with a dedicated feature"
        for entry in summary["variables"]
    ]
    if "relevant_share" in summary:
        parts.append(
            f"attribution on the relevant positions {summary['relevant_share']:.2f}, on the "
            f"positions after them {summary['after_relevant_share']:.2f}"
        )
    return "; ".join(parts)

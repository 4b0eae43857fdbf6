"""``workbench report``: the dashboard's figures of a run, or of the runs of a folder, as one
self-contained HTML file: plotly.js is inlined once, so the file opens with no network.

A run folder gives its index row, training curves, the attention of its model (the layer x head
grid and the pattern of every head of the last layer, with the first method's selection), the
fidelity of the methods and their layouts, and its SAEs; a folder of runs (an experiment's, a
results folder, a store's root) gives the index, the curves of every run and the power-law fits
of its analyses. A part that cannot be drawn (a damaged checkpoint, sae-lens missing) is said in
the report, in its place.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

import workbench.sparse
from workbench.dashboard import panels
from workbench.dashboard.data import MODEL, READ_ERRORS, TRACE, AttentionSubject, Catalogue
from workbench.io import atomic_write_text
from workbench.runs import is_run
from workbench.viz.experiments import table_figure

DEFAULT_METHODS = ("top_k", "top_p", "sink_window", "banded", "block_top_k")
"""Methods a run's report compares (settings for short inputs); the first is overlaid on the
patterns."""
MAX_HEADS = 8
"""Heads of the last layer whose pattern a report draws."""
DRAW_FAILURES = (*READ_ERRORS, NotImplementedError, RuntimeError, ImportError)
"""What a section reports in place of its figures."""

STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1400px; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 36px; }
.note { color: #555; }
.problem { background: #FDECEA; border: 1px solid #D62728; padding: 6px 10px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figures > div { flex: 1 1 600px; min-width: 480px; }
"""


@dataclass
class Section:
    """A heading with its figures, notes and problems."""

    title: str
    figures: list[go.Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def attempt(self, what: str, draw: Callable[[], None]) -> None:
        """Run ``draw`` (which adds to the section); a failure becomes a problem of the section."""
        try:
            draw()
        except DRAW_FAILURES as error:
            self.problems.append(f"{what}: {type(error).__name__}: {error}")


def write_report(
    folder: str | Path,
    out: str | Path,
    *,
    examples: int = 4,
    methods: Sequence[str] = DEFAULT_METHODS,
    sae_examples: int = 256,
) -> Path:
    """Write the report of ``folder`` (a run folder, or a folder of runs) to ``out`` (HTML,
    atomically) and return its path; see the module docstring. ``examples``: evaluation
    examples the model is captured on; ``methods``: registered methods compared;
    ``sae_examples``: held-out examples of each SAE's feature report."""
    for name, value in (("folder", folder), ("out", out)):
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{name} must be a path (str or Path), got {value!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: {folder} is not a folder")
    if Path(out).is_dir():
        raise ValueError(f"out must be a file to write, got the folder {out}")
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods must be a non-empty sequence of method names, got {methods!r}")
    try:
        chosen = [workbench.sparse.short_input(name) for name in methods]
    except ValueError as error:
        raise ValueError(f"methods: {error}") from None
    if is_run(folder):
        root = folder.parent.parent
        catalogue = Catalogue(root, examples=examples, sae_examples=sae_examples)
        key = catalogue.key(folder)
        sections = list(run_sections(catalogue, key, chosen))
        title = f"run {key}"
    else:
        catalogue = Catalogue(folder, examples=examples, sae_examples=sae_examples)
        sections = list(folder_sections(catalogue))
        title = f"runs under {folder}"
    return atomic_write_text(out, render(title, sections))


def run_sections(
    catalogue: Catalogue, key: str, methods: Sequence[workbench.sparse.SparseMethod]
) -> Iterator[Section]:
    """The sections of one run's report."""
    run = catalogue.run(key)
    summary = Section("Run")
    summary.figures.append(
        panels.index_table([row for row in catalogue.index() if row["id"] == key])
    )
    yield summary
    curves = Section("Training curves")
    figures, problems = panels.curves_figures({key: run})
    curves.figures += figures.values()
    curves.problems += problems
    yield curves
    sources = [
        value
        for value, _ in catalogue.sources()
        if value == f"{MODEL}:{key}" or value.startswith(f"{TRACE}:{key}/")
    ]
    if not sources:
        return
    attention = Section("Attention")
    found: list[AttentionSubject] = []

    def load() -> None:  # the model where there is one (sources list it first), else a trace
        subject = catalogue.subject(sources[0])
        attention.notes.append(subject.note)
        found.append(subject)

    attention.attempt("attention", load)
    if found:
        attention.attempt("attention", lambda: _attention_figures(attention, found[0], methods[0]))
    yield attention
    if found and found[0].live:
        section = Section("Sparse methods on this model")

        def compare() -> None:
            fidelity, layouts, rows = panels.methods_panel(found[0], methods)
            section.figures += [fidelity, layouts]
            section.figures.append(table_figure(rows, title="fidelity per method"))

        section.attempt("methods", compare)
        yield section
    for value, _ in catalogue.saes():
        if value.startswith(f"{key}/"):
            yield _sae_section(catalogue, value)


def _attention_figures(
    section: Section, subject: AttentionSubject, method: workbench.sparse.SparseMethod
) -> None:
    section.figures.append(panels.grid_figure(subject))
    layers = sorted(subject.trace.patterns)
    if not layers:
        section.notes.append("no patterns recorded (statistics only)")
        return
    for head in subject.trace.heads[:MAX_HEADS]:
        figure, selection = panels.pattern_panel(
            subject,
            layer=layers[-1],
            head=head,
            method=method if subject.live else None,
            window=None,
        )
        if selection is not None:
            figure.update_layout(
                title=f"{figure.layout.title.text}<br><sup>{panels.sparse_label(method)}: "
                f"density {selection.density:.3f}, recall {selection.recall:.3f}, output error "
                f"{selection.output_error:.3g}</sup>"
            )
        section.figures.append(figure)


def _sae_section(catalogue: Catalogue, value: str) -> Section:
    section = Section(f"SAE {value}")

    def metadata() -> None:
        found = catalogue.sae_metadata(value)
        section.figures.append(panels.sae_summary_table(value, found))
        training = panels.sae_training_figure(value, found)
        if training is not None:
            section.figures.append(training)

    def features() -> None:
        view = catalogue.sae(value)
        section.figures += panels.sae_feature_figures(view).values()
        section.figures.append(panels.sae_examples_figure(view))

    section.attempt("record", metadata)
    section.attempt("features", features)
    return section


def folder_sections(catalogue: Catalogue) -> Iterator[Section]:
    """The sections of a folder's report: the index, every run's curves, the fits."""
    rows = catalogue.index()
    index = Section("Runs")
    if rows:
        index.figures.append(panels.index_table(rows))
    else:
        index.notes.append(f"no runs under {catalogue.root}")
    yield index
    curves = Section("Training curves")
    figures, problems = panels.curves_figures(catalogue.runs)
    curves.figures += figures.values()
    curves.problems += problems
    yield curves
    for key, _ in catalogue.fits():
        yield _fit_section(catalogue, key)


def _fit_section(catalogue: Catalogue, key: str) -> Section:
    section = Section(f"Power-law fit: {key}")
    section.attempt(
        "fit", lambda: section.figures.extend(panels.fit_figures(catalogue.analysis(key)))
    )
    return section


def render(title: str, sections: Sequence[Section]) -> str:
    """The HTML document: plotly.js inlined before the first figure, every figure after it
    drawing with that copy."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">sparse-attention workbench report, written '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; opens offline.</p>",
    ]
    inlined = False
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in section.notes]
        parts += [f'<p class="problem">{html.escape(text)}</p>' for text in section.problems]
        parts.append('<div class="figures">')
        for figure in section.figures:
            snippet = pio.to_html(
                figure, full_html=False, include_plotlyjs=not inlined, include_mathjax=False
            )
            parts.append(f"<div>{snippet}</div>")
            inlined = True
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)

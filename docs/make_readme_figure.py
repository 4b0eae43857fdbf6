"""Render the README's headline figure (``docs/emergence_quick.png``) from the quick emergence run.

Needs plotly's static-image export (``pip install kaleido`` and a Chrome/Chromium); the project
itself does not. Runs (or reuses) ``workbench run emergence --quick`` under ``runs/``.

    python docs/make_readme_figure.py
"""

from __future__ import annotations

from pathlib import Path

from plotly.subplots import make_subplots

from workbench.experiments.analyses import emergence_analysis
from workbench.experiments.runner import run_experiment

OUT = Path(__file__).parent / "emergence_quick.png"


def main() -> None:
    result = run_experiment("emergence", quick=True, progress=False)
    figures = emergence_analysis(result.spec, result.runs).figures
    loss, fit = figures["loss"], figures["fit"]
    combined = make_subplots(
        rows=1, cols=2, subplot_titles=("eval loss during training", "emergence time vs power law")
    )
    for column, figure in ((1, loss), (2, fit)):
        for trace in figure.data:
            if trace.xaxis in (None, "x"):  # the first panel of each figure
                combined.add_trace(trace, row=1, col=column)
    combined.update_xaxes(title_text="step", row=1, col=1)
    combined.update_yaxes(title_text="eval loss", type="log", row=1, col=1)
    combined.update_xaxes(title_text=fit.layout.xaxis.title.text, type="log", row=1, col=2)
    combined.update_yaxes(title_text="emergence time (steps)", type="log", row=1, col=2)
    combined.update_layout(width=1200, height=450, legend={"font": {"size": 9}})
    combined.write_image(OUT, scale=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

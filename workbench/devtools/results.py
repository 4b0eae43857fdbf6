"""Copy an analysis and its runs into a results folder of the repository (``docs/results/<name>/``).

``python -m workbench.devtools.results runs/<experiment>/<experiment-hash> docs/results/<name>``
writes ``experiment.yaml``, ``results.json`` and ``figures/*.html`` of the analysis and, per run it
used, ``runs/<config-hash>/{config.yaml, metrics.jsonl, results.json}`` (no checkpoints or traces).
The figures load plotly.js from the one ``plotly.min.js`` of the results' parent folder
(``docs/results/plotly.min.js``) instead of a copy in each folder. Runs copied back into
``runs/<experiment>/`` are reused by ``workbench run`` (same config, same hash), and ``--no-train``
redraws the analysis from them.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from workbench.io import PLOTLY_SCRIPT, atomic_write_text
from workbench.runs import Analysis

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json")
"""The files of a run that a results folder keeps."""


def copy_results(analysis_dir: str | Path, target: str | Path) -> Path:
    """Copy the analysis folder ``analysis_dir`` (``runs/<experiment>/<hash>``) and the runs it
    used (in its parent folder) into ``target`` (written as ``<target>.partial`` and renamed once
    complete), replacing what was there; returns ``target``.
    ``ValueError`` when ``analysis_dir`` holds no analysis or one of its runs is missing."""
    analysis = Analysis(Path(analysis_dir))
    results = analysis.results()
    if results is None or not (analysis.path / "experiment.yaml").exists():
        raise ValueError(
            f"analysis_dir must be an analysis folder (experiment.yaml and results.json): "
            f"{analysis.path}"
        )
    runs = [analysis.path.parent / name for name in analysis.run_names()]
    missing = [str(run) for run in runs if not (run / "config.yaml").exists()]
    if missing:
        raise ValueError(f"runs of the analysis are missing: {', '.join(missing)}")
    target = Path(target)
    partial = target.with_name(target.name + ".partial")  # complete before it replaces target
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "figures").mkdir(parents=True)
    for name in ("experiment.yaml", "results.json"):
        shutil.copy2(analysis.path / name, partial / name)
    script = f'src="{PLOTLY_SCRIPT}"'
    shared = f'src="../../{PLOTLY_SCRIPT}"'
    for figure in sorted(analysis.figures_dir.glob("*.html")):
        html = figure.read_text(encoding="utf-8").replace(script, shared)
        (partial / "figures" / figure.name).write_text(html, encoding="utf-8")
    for run in runs:
        (partial / "runs" / run.name).mkdir(parents=True)
        for name in RUN_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, partial / "runs" / run.name / name)
    if not (target.parent / PLOTLY_SCRIPT).exists():
        from plotly.offline import get_plotlyjs

        atomic_write_text(target.parent / PLOTLY_SCRIPT, get_plotlyjs())
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("analysis_dir", type=Path, help="runs/<experiment>/<experiment-hash>")
    parser.add_argument("target", type=Path, help="e.g. docs/results/emergence_cpu")
    args = parser.parse_args(argv)
    print(copy_results(args.analysis_dir, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Render the README's headline figure and its caption from the quick emergence run.

    python docs/make_readme_figure.py             # or: make readme-figure
    python docs/make_readme_figure.py --no-image  # the numbers and the caption only
    python docs/make_readme_figure.py --check     # exit 1 if the README's caption is stale

Runs (or reuses) ``workbench run emergence --quick`` under ``runs/`` of the repository, then writes

- ``docs/emergence_quick.png``: the emergence analysis' own figures side by side: the test-loss
  curves with the emergence threshold and each run's emergence time, and the emergence times
  against T with the fitted power law, its 95% band and the paper's slope;
- ``docs/emergence_quick.json``: the numbers the caption quotes (the quick run's emergence times,
  fit and comparison with the paper);
- the README's caption, between its marker lines, from that JSON and the committed full sweep
  (``docs/results/emergence_fan_in_h100/results.json``); ``tests/test_readme.py`` checks that they agree.

The PNG needs plotly's static export, which the project does not: kaleido >= 1 (the ``figures``
extra: ``pip install -e ".[figures]"``) and a Chrome or Chromium. Kaleido uses the first
``chromium`` / ``google-chrome`` on ``PATH`` (Debian: ``apt install chromium``), or the browser at
``BROWSER_PATH``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
IMAGE = DOCS / "emergence_quick.png"
NUMBERS = DOCS / "emergence_quick.json"
FULL_SWEEP = DOCS / "results" / "emergence_fan_in_h100" / "results.json"
README = ROOT / "README.md"
START = "<!-- generated caption: emergence-quick (python docs/make_readme_figure.py) -->"
END = "<!-- end of generated caption -->"

WORDS = {
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    8: "eight",
    12: "twelve",
    15: "fifteen",
}


def _values(runs: Sequence[Mapping[str, Any]], name: str) -> str:
    """``"{8, 16, 32}"``: the values of covariate ``name`` among the runs."""
    return "{" + ", ".join(f"{value:g}" for value in sorted({run[name] for run in runs})) + "}"


def _law(fit: Mapping[str, Any], intervals: Sequence[str] = ()) -> str:
    """``"T^0.61 [0.31, 0.91] B^-0.50"``: the exponents, with the intervals of ``intervals``."""
    terms = []
    for name in fit["names"]:
        term = f"{name}^{fit['exponents'][name]:.2f}"
        if name in intervals:
            low, high = fit["intervals"][name]
            term += f" [{low:.2f}, {high:.2f}]"
        terms.append(term)
    return " ".join(terms)


def caption(quick: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    """The README's caption of the figure (markdown, lines of at most 100 characters), from
    ``docs/emergence_quick.json`` (``quick``) and the full sweep's ``results.json`` (``full``)."""
    runs, fit, comparison = quick["runs"], quick["fit"], quick["comparison"]
    paper = " ".join(f"{row['name']}^{row['paper']:.2f}" for row in comparison)
    agree = all(row["within_ci"] for row in comparison)
    outside = [row["name"] for row in comparison if not row["within_ci"]]
    verdict = (
        f"consistent with the paper's {quick['paper']} fit {paper}"
        if agree
        else f"against the paper's {quick['paper']} fit {paper} ({', '.join(outside)} outside)"
    )
    count = WORDS.get(len(runs), str(len(runs)))
    full_fit = full["fit"]
    planned = full["n_runs"] + len(full.get("missing", []))
    trained = (
        f"all {planned}" if full["n_runs"] == planned else f"{full['n_runs']} of its {planned}"
    )
    repetition = f"in-context repetition B in {_values(runs, 'B')}"
    if any(run.get("p") for run in runs):
        repetition += f", cross-sample repetition p in {_values(runs, 'p')}"
    fitted = [run for run in runs if not run.get("p")]
    text = (
        f"*`make demo`: {count} small transformers trained on the single-location task of Zucchet "
        f"et al. (sequence length T in {_values(runs, 'T')}, dimension d in {_values(runs, 'd')}, "
        f"{repetition}); left, the eval loss plateaus and then drops below the emergence "
        f"threshold ({quick['fraction']:g} x {quick['initial_loss']:g}, dashed; dots: each run's "
        f"emergence time); right, the emergence times of the {len(fitted)} runs without "
        f"cross-sample repetition against T with the fitted power law (solid, "
        f"{fit['confidence']:.0%} band) and the paper's slope (dashed). The quick CPU run gives "
        f"{_law(fit, fit['names'])} ({fit['confidence']:.0%} CIs), {verdict}; the full sweep "
        f"at the paper's size ({trained} runs on one GPU, "
        f"`docs/results/emergence_fan_in_h100/`) gives {_law(full_fit, full_fit['names'])}.*"
    )
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)


def _pattern() -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(START)}\n(.*?)^{re.escape(END)}$", re.S | re.M)


def read_caption(text: str) -> str:
    """The generated caption of ``text`` (a README); ``ValueError`` unless found once."""
    found = _pattern().findall(text)
    if len(found) != 1:
        raise ValueError(f"expected one caption between {START!r} and {END!r}, found {len(found)}")
    return found[0].rstrip("\n")


def expected_caption() -> str:
    """The caption that the committed numbers give."""
    quick = json.loads(NUMBERS.read_text(encoding="utf-8"))
    full = json.loads(FULL_SWEEP.read_text(encoding="utf-8"))
    return caption(quick, full)


def write_caption() -> bool:
    """Rewrite the README's caption from the committed numbers; True if it changed."""
    text = README.read_text(encoding="utf-8")
    if read_caption(text) == expected_caption():
        return False
    updated = _pattern().sub(lambda _match: f"{START}\n{expected_caption()}\n{END}", text)
    README.write_text(updated, encoding="utf-8")
    return True


def quick_numbers(spec: Any, results: Mapping[str, Any]) -> dict[str, Any]:
    """What the caption quotes of the quick run's analysis ``results``."""
    options = {"fraction": 0.2, "initial_loss": None, "paper": "transformer", **spec.analysis}
    keep = ("config_hash", "T", "d", "B", "p", "emergence_time", "last_step")
    return {
        "experiment": spec.name,
        "quick": True,
        "fraction": options["fraction"],
        "initial_loss": options["initial_loss"],
        "paper": options["paper"],
        "runs": [{key: row[key] for key in keep} for row in results["runs"]],
        "fit": results["fit"],
        "comparison": results["comparison"],
    }


def figure(loss: Any, fit: Any) -> Any:
    """The loss figure (left) beside the first panel of the fit figure (right)."""
    from plotly.subplots import make_subplots

    combined = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("eval loss during training", "emergence time vs power law"),
        horizontal_spacing=0.08,
    )
    for trace in loss.data:
        combined.add_trace(trace, row=1, col=1)
    for trace in fit.data:
        if trace.xaxis in (None, "x"):  # the fit figure's first panel
            combined.add_trace(trace, row=1, col=2)
    combined.update_xaxes(title_text="step", row=1, col=1)
    combined.update_yaxes(title_text="eval loss", type="log", row=1, col=1)
    combined.update_xaxes(title_text=fit.layout.xaxis.title.text, type="log", row=1, col=2)
    combined.update_yaxes(title_text="emergence time (steps)", type="log", row=1, col=2)
    combined.update_layout(
        width=1200,
        height=460,
        template="plotly_white",
        legend={"font": {"size": 10}, "tracegroupgap": 2},
    )
    return combined


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-image", action="store_true", help="skip the PNG (no kaleido)")
    parser.add_argument("--check", action="store_true", help="only check the README's caption")
    args = parser.parse_args(argv)
    if args.check:
        stale = read_caption(README.read_text(encoding="utf-8")) != expected_caption()
        print(f"{README}: the caption is {'stale' if stale else 'up to date'}")
        return int(stale)

    from workbench.experiments.analyses import emergence_analysis
    from workbench.experiments.runner import run_experiment
    from workbench.io import atomic_write_json

    result = run_experiment("emergence", quick=True, runs_dir=ROOT / "runs", progress=False)
    output = emergence_analysis(result.spec, result.runs)
    atomic_write_json(NUMBERS, quick_numbers(result.spec, output.results))
    print(f"wrote {NUMBERS}")
    if not args.no_image:
        figure(output.figures["loss"], output.figures["fit"]).write_image(IMAGE, scale=1)
        print(f"wrote {IMAGE}")
    print(f"{README}: caption {'rewritten' if write_caption() else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The kernel targets, read from `bench/attention.py` results: one markdown row per target with
what each file (one variant, one run) reached at one sequence length, and whether it is met.

    python bench/targets.py bench/results/hopper_{pointers,descriptors}_h200.json \\
        bench/results/row_stats_budgets_64k_h200.json --length 65536

Every ratio is one the run itself recorded (ours against SDPA, the ideal or FlexAttention in the
same process); a target no given file measured is left out. The table's numbers are therefore the
files' numbers, never typed by hand. ``--figure PATH`` also writes the table as a plotly figure
(`figure`: each target's bound at 1, each file a marker, filled where met).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.io import write_figure
from workbench.viz.style import PALETTE

LAYOUTS = ("causal_dense", "random_10pct", "sink_window", "top_p_xattention")

Entry = dict[str, Any]
"""One sequence length of a results file (``results["lengths"][i]``)."""


@dataclass(frozen=True)
class Target:
    """A bound on one number of a results entry.

    Attributes:
        name: what the row says.
        bound: the bound.
        at_most: True: met when the number is ``<= bound``; False: when ``>= bound``.
        read: the number from an entry (None when the entry did not measure it).
        detail: a note on the same entry printed beside the number (e.g. the closed fraction).
        requires: a further condition on the same entry for the target to be met.
    """

    name: str
    bound: float
    at_most: bool
    read: Callable[[Entry], float | None]
    detail: Callable[[Entry], str] = lambda entry: ""
    requires: Callable[[Entry], bool] = lambda entry: True

    def met(self, value: float, entry: Entry) -> bool:
        within = value <= self.bound if self.at_most else value >= self.bound
        return within and self.requires(entry)


def _layout_number(layout: str, side: str, key: str) -> Callable[[Entry], float | None]:
    def read(entry: Entry) -> float | None:
        found = entry.get("layouts", {}).get(layout, {})
        value = found.get(side, {}).get(key) if side else found.get(key)
        return None if value is None else float(value)

    return read


def _dense_over_sdpa(entry: Entry) -> float | None:
    dense = entry.get("layouts", {}).get("causal_dense")
    return None if dense is None else dense["ours"]["fwd_ms"] / entry["sdpa_causal"]["fwd_ms"]


def _row_stats(mode: str | None, key: str) -> Callable[[Entry], float | None]:
    def read(entry: Entry) -> float | None:
        stats = entry.get("row_stats") or {}
        found = stats.get(mode) if mode else stats
        value = (found or {}).get(key)
        return None if value is None else float(value)

    return read


def _bracket_detail(entry: Entry) -> str:
    bracket = entry["row_stats"]["bracket"]
    return (
        f"closed {bracket['closed_fraction']:.0%}, "
        f"estimate exact {bracket['estimate_exact_fraction']:.0%}"
    )


def _flex_targets() -> list[Target]:
    return [
        Target(
            f">= 1.2x FlexAttention, {layout} {pass_}",
            1.2,
            at_most=False,
            read=_layout_number(layout, "", f"speedup_vs_flex_{pass_}"),
        )
        for layout in LAYOUTS
        for pass_ in ("fwd", "fwd_bwd")
    ]


TARGETS: tuple[Target, ...] = (
    Target(
        "10%-random forward <= 1.15x ideal",
        1.15,
        at_most=True,
        read=_layout_number("random_10pct", "ours", "fwd_ms_over_ideal"),
    ),
    Target("dense causal forward <= 1.10x SDPA", 1.10, at_most=True, read=_dense_over_sdpa),
    *_flex_targets(),
    Target(
        "1%-dense top-p forward <= 1.5x ideal",
        1.5,
        at_most=True,
        read=_layout_number("top_p_xattention", "ours", "fwd_ms_over_ideal"),
    ),
    Target(
        "forward+backward at 10% <= 1.4x ideal",
        1.4,
        at_most=True,
        read=_layout_number("random_10pct", "ours", "fwd_bwd_ms_over_ideal"),
    ),
    Target(
        "row statistics alone <= 1.1x SDPA forward",
        1.1,
        at_most=True,
        read=_row_stats(None, "statistics_only_over_sdpa_fwd"),
    ),
    Target(
        "bracket budgets <= 4x SDPA forward (>= 90% of (row, p) exact)",
        4.0,
        at_most=True,
        read=_row_stats("bracket", "over_sdpa_fwd"),
        detail=_bracket_detail,
        requires=lambda entry: entry["row_stats"]["bracket"]["estimate_exact_fraction"] >= 0.9,
    ),
    Target(
        "exact budgets <= 6x SDPA forward",
        6.0,
        at_most=True,
        read=_row_stats("exact", "over_sdpa_fwd"),
    ),
)


def entry_at(results: dict, length: int) -> Entry | None:
    """The entry of ``results`` for sequence length ``length`` (None: not measured)."""
    return next((entry for entry in results["lengths"] if entry["n"] == length), None)


def label(results: dict, path: Path) -> str:
    """How a file is named in the table: its variant (loads / grid) and file name."""
    variant = results.get("variant", {})
    return f"{variant.get('loads', 'auto')}/{variant.get('grid', 'auto')} ({path.name})"


@dataclass(frozen=True)
class Reached:
    """What one file reached on one target at one length."""

    target: Target
    label: str
    value: float
    entry: Entry

    @property
    def met(self) -> bool:
        return self.target.met(self.value, self.entry)

    @property
    def over_bound(self) -> float:
        """The number over the bound, or the bound over the number for ``>=`` targets: at most
        1 where the number is within the bound."""
        return (
            self.value / self.target.bound
            if self.target.at_most
            else self.target.bound / self.value
        )


def reached(
    files: Sequence[tuple[Path, dict]], length: int, targets: Iterable[Target] = TARGETS
) -> list[list[Reached]]:
    """Per target that at least one file measured at ``length``, what each such file reached."""
    found = []
    for target in targets:
        numbers = []
        for path, results in files:
            entry = entry_at(results, length)
            value = None if entry is None else target.read(entry)
            if value is not None:
                numbers.append(Reached(target, label(results, path), value, entry))
        if numbers:
            found.append(numbers)
    return found


def rows(
    files: Sequence[tuple[Path, dict]], length: int, targets: Iterable[Target] = TARGETS
) -> list[tuple[str, list[str], bool | None]]:
    """``(target name, ["1.28x descriptors/tiles (file)", ...], met by any file)`` per target that
    at least one file measured at ``length``."""
    table = []
    for numbers in reached(files, length, targets):
        texts = []
        for number in numbers:
            note = number.target.detail(number.entry)
            texts.append(f"{number.value:.2f}x {number.label}" + (f", {note}" if note else ""))
        table.append((numbers[0].target.name, texts, any(number.met for number in numbers)))
    return table


def figure(files: Sequence[tuple[Path, dict]], length: int) -> go.Figure:
    """The targets at ``length`` at a glance: one row per target, one marker per file at its number
    over the bound (the bound over its number for ``>=`` targets, `Reached.over_bound`), so that
    every target's bound is the line at 1 and a marker left of it is within; filled where the
    target is met (a further condition included), hollow where not; the number on hover."""
    chart = go.Figure()
    by_target = reached(files, length)
    labels = sorted({label(results, path) for path, results in files})
    for index, file_label in enumerate(labels):
        points = [
            number for numbers in by_target for number in numbers if number.label == file_label
        ]
        chart.add_trace(
            go.Scatter(
                x=[number.over_bound for number in points],
                y=[number.target.name for number in points],
                mode="markers",
                name=file_label,
                marker={
                    "size": 11,
                    "color": PALETTE[index % len(PALETTE)],
                    "symbol": ["circle" if number.met else "circle-open" for number in points],
                    "line": {"width": 2, "color": PALETTE[index % len(PALETTE)]},
                },
                customdata=[f"{number.value:.2f}x" for number in points],
                hovertemplate="%{y}<br>reached %{customdata} (%{x:.2f} of the bound)",
            )
        )
    chart.add_vline(x=1.0, line_dash="dash", annotation_text="bound")
    devices = sorted({results["device"] for _, results in files})
    chart.update_layout(
        title=f"Kernel targets at N = {length} ({', '.join(devices)}): left of 1 is within",
        xaxis_title="reached over the bound (bound over reached for >= targets)",
        yaxis={
            "autorange": "reversed",
            "categoryorder": "array",
            "categoryarray": [numbers[0].target.name for numbers in by_target],
        },
        legend={"orientation": "h", "y": -0.2},
        height=160 + 34 * len(by_target),
        margin={"l": 20},
    )
    return chart


def markdown(files: Sequence[tuple[Path, dict]], length: int) -> str:
    """The targets table at ``length`` as markdown, headed by the files' device and versions."""
    if not files:
        raise ValueError("files: give at least one results file of bench/attention.py")
    devices = sorted({f"{r['device']}, torch {r['torch']}, triton {r['triton']}" for _, r in files})
    dates = sorted({r["date"] for _, r in files})
    lines = [
        f"Targets at N = {length} ({'; '.join(devices)}; {', '.join(dates)})",
        "",
        "| target | reached | met |",
        "| --- | --- | --- |",
    ]
    for name, reached, met in rows(files, length):
        lines.append(f"| {name} | {'; '.join(reached)} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+", help="results of bench/attention.py")
    parser.add_argument("--length", type=int, default=65536, help="sequence length (tokens)")
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="also write the figure here (.html: interactive, offline; .png / .svg: an image)",
    )
    args = parser.parse_args()
    if args.length <= 0:
        raise SystemExit(f"--length must be a positive number of tokens, got {args.length}")
    if args.figure is not None and args.figure.suffix not in (".html", ".png", ".svg"):
        raise SystemExit(f"--figure must end in .html, .png or .svg, got {args.figure}")
    missing = [path for path in args.files if not path.is_file()]
    for path in missing:
        print(f"not found, left out: {path}", file=sys.stderr)
    files = [(path, json.loads(path.read_text())) for path in args.files if path not in missing]
    if not files:
        raise SystemExit("none of the results files exists")
    print(markdown(files, args.length))
    if args.figure is not None:
        chart = figure(files, args.length)
        if args.figure.suffix == ".html":
            write_figure(chart, args.figure)
        else:
            chart.write_image(args.figure, width=1100)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

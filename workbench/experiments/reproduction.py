"""Paper-versus-ours tables: a reproduction states the paper's number, ours with its interval, and
whether the paper's number lies inside that interval.

An analysis builds rows (`exponent_rows`, `ratio_row`, `value_row`), stores them in its results
as ``paper_vs_ours`` and prints them as its `Headline` (`reproduction_headline`); the README's
reproduction tables are rendered from the committed results' rows
(`workbench.devtools.readme`). A row::

    {"quantity": "transformer: exponent of T", "paper": 0.80, "ours": 0.98,
     "low": 0.89, "high": 1.06, "reproduces": False, "note": ""}

``reproduces`` is None where there is no paper number or no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workbench.analysis import PowerLawFit
from workbench.experiments.base import Headline

COLUMNS = ["quantity", "paper", "ours", "95% interval", "paper inside"]


def value_row(
    quantity: str,
    paper: float | None,
    ours: float | None,
    low: float | None = None,
    high: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One row; ``reproduces`` is whether ``low <= paper <= high`` (None without both)."""
    inside = None
    if paper is not None and low is not None and high is not None:
        inside = bool(low <= paper <= high)
    return {
        "quantity": quantity,
        "paper": paper,
        "ours": ours,
        "low": low,
        "high": high,
        "reproduces": inside,
        "note": note,
    }


def exponent_rows(
    fit: PowerLawFit | None, paper: Mapping[str, float], label: str, prefactor: float | None = None
) -> list[dict[str, Any]]:
    """A row per exponent of ``paper`` that ``fit`` has (with its interval), and the prefactor
    (its interval from ``log_prefactor``'s) when ``prefactor`` is given. No fit: rows without
    our numbers."""
    rows = []
    for name, reference in paper.items():
        quantity = f"{label}: exponent of {name}"
        if fit is None or name not in fit.exponents:
            rows.append(value_row(quantity, reference, None, note="not fitted"))
            continue
        low, high = fit.intervals[name]
        rows.append(value_row(quantity, reference, fit.exponents[name], low, high))
    if prefactor is not None:
        quantity = f"{label}: prefactor"
        if fit is None:
            rows.append(value_row(quantity, prefactor, None, note="not fitted"))
        else:
            low, high = (math.exp(bound) for bound in fit.intervals["log_prefactor"])
            note = "only comparable when the same covariates are fitted"
            rows.append(value_row(quantity, prefactor, fit.prefactor, low, high, note))
    return rows


def geometric_mean_interval(
    ratios: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """``(geometric mean, low, high)`` of positive ``ratios``: a t-interval on their logarithms
    (no interval from fewer than two)."""
    from scipy import stats

    logs = np.log(np.asarray(ratios, dtype=np.float64))
    centre = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return centre, None, None
    half = (
        stats.t.ppf((1 + confidence) / 2, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    )
    return centre, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def ratio_row(
    quantity: str, paper: float | None, ratios: Sequence[float], note: str = ""
) -> dict[str, Any]:
    """A row of the geometric mean of ``ratios`` (e.g. speed-ups over seeds) with its 95%
    interval; no ratios: a row without our number."""
    if not ratios:
        return value_row(quantity, paper, None, note=note or "no pair of runs to compare")
    centre, low, high = geometric_mean_interval(ratios)
    count = f"{len(ratios)} pair{'s' if len(ratios) > 1 else ''}"
    return value_row(quantity, paper, centre, low, high, f"{note}; {count}" if note else count)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def reproduction_headline(
    title: str, rows: Sequence[Mapping[str, Any]], note: str = ""
) -> Headline:
    """The rows as a `Headline` table: quantity, paper, ours, 95% interval, paper inside."""
    cells = []
    for row in rows:
        interval = (
            f"[{_number(row['low'])}, {_number(row['high'])}]"
            if row["low"] is not None and row["high"] is not None
            else "-"
        )
        inside = {True: "yes", False: "no", None: "-"}[row["reproduces"]]
        cells.append(
            [row["quantity"], _number(row["paper"]), _number(row["ours"]), interval, inside]
        )
    return Headline(title, COLUMNS, cells, note=note)

"""The README's generated tables: sparse methods and toy tasks from the registries, and the
paper-versus-ours table of each committed reproduction (``docs/results/<name>/results.json``'s
``paper_vs_ours`` rows, `workbench.experiments.reproduction`).

README.md holds each generated table between two marker lines::

    <!-- generated table: sparse-methods (python -m workbench.devtools.readme) -->
    | name | selection | ...
    <!-- end of generated table -->

``python -m workbench.devtools.readme`` (``make readme``) rewrites them in place (``--check``: exit
with status 1 when one differs, writing nothing); ``tests/test_readme.py`` fails when one differs.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

START = "<!-- generated table: {name} (python -m workbench.devtools.readme) -->"
END = "<!-- end of generated table -->"
README = Path(__file__).resolve().parents[2] / "README.md"
"""The README of a source checkout (an installed wheel has none: pass a path)."""


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table (no trailing newline); ``|`` in cells is escaped."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(
        "| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines
    )


def _value(value: Any) -> str:
    """A hyper-parameter as the table shows it: a nested method by its name."""
    return value["name"] if isinstance(value, dict) and "name" in value else str(value)


def methods_table() -> str:
    """Every registered sparse method: name, selection, defaults, input-dependence, source."""
    import workbench.sparse

    rows = []
    for name, description, paper in workbench.sparse.describe():
        method = workbench.sparse.get(name)
        defaults = ", ".join(f"{key}={_value(v)}" for key, v in method.hyper_parameters().items())
        dependent = "yes" if method.input_dependent else "no"
        rows.append([f"`{name}`", description, defaults, dependent, paper])
    return markdown_table(["name", "selection", "defaults", "input-dependent", "source"], rows)


def tasks_table() -> str:
    """Every registered toy task: name, kind, what is predicted, relevant positions, source."""
    import toy_tasks

    rows = []
    for name, description, paper in toy_tasks.describe():
        cls = toy_tasks.task_class(name)
        rows.append([f"`{name}`", cls.kind, description, cls.relevance, paper])
    header = ["name", "kind", "task: what is predicted", "relevant positions", "source"]
    return markdown_table(header, rows)


RESULTS = README.parent / "docs" / "results"
"""The committed results of a source checkout."""
REPRODUCTIONS = (
    "emergence_fan_in_h100",
    "emergence_cpu",
    "emergence_toy_cpu",
    "emergence_recall_cpu",
    "icl_linreg_cpu",
)
"""Folders of `RESULTS` whose paper-versus-ours rows the README shows (marker
``reproduction-<folder>``)."""
HEADLINES = ("semantic_focus_recall_h100",)
"""Folders of `RESULTS` whose headline table (the one ``workbench run`` prints) the README
shows (marker ``headline-<folder>``)."""
FOCUS_VARIANTS = ("semantic_focus_even_pairs",)
"""Folders of `RESULTS` holding a ``semantic_focus`` analysis whose every variant the README
shows against full attention (marker ``variants-<folder>``)."""


def committed_results(folder: str) -> dict[str, Any]:
    """``docs/results/<folder>/results.json``, read."""
    return json.loads((RESULTS / folder / "results.json").read_text(encoding="utf-8"))


def reproduction_table(folder: str) -> str:
    """The ``paper_vs_ours`` rows of ``docs/results/<folder>/results.json``: quantity, paper,
    ours, 95% interval, whether the paper's number lies inside, note."""
    from workbench.experiments.reproduction import reproduction_headline

    results = committed_results(folder)
    rows = results["paper_vs_ours"]
    headline = reproduction_headline(folder, rows)
    cells = [[*cells, row["note"]] for cells, row in zip(headline.rows, rows, strict=True)]
    return markdown_table([*headline.columns, "note"], cells)


def headline_table(folder: str) -> str:
    """The ``headline`` table of ``docs/results/<folder>/results.json`` (its columns and rows,
    as ``workbench run`` prints them)."""
    results = committed_results(folder)
    headline = results["headline"]
    return markdown_table(headline["columns"], headline["rows"])


def focus_variants_table(folder: str) -> str:
    """Every variant of the ``semantic_focus`` analysis in ``docs/results/<folder>/`` against
    full attention (the headline's columns, not only its ``compare`` variant)."""
    from workbench.experiments.semantic_focus_analysis import semantic_focus_headline

    results = committed_results(folder)
    headline = semantic_focus_headline(
        results["variants"], results["comparisons"], results["accuracy"], compare=None
    )
    return markdown_table(headline.columns, headline.rows)


TABLES: dict[str, Callable[[], str]] = {
    "sparse-methods": methods_table,
    "toy-tasks": tasks_table,
    **{
        f"reproduction-{folder}": functools.partial(reproduction_table, folder)
        for folder in REPRODUCTIONS
    },
    **{f"headline-{folder}": functools.partial(headline_table, folder) for folder in HEADLINES},
    **{
        f"variants-{folder}": functools.partial(focus_variants_table, folder)
        for folder in FOCUS_VARIANTS
    },
}
"""Generated tables by marker name."""


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"^{re.escape(START.format(name=name))}\n(.*?)^{re.escape(END)}$", re.S | re.M
    )


def read_tables(text: str) -> dict[str, str]:
    """The generated tables found in ``text`` (a README), by name, without trailing newline;
    ``ValueError`` when a table's markers are missing or repeated."""
    tables = {}
    for name in TABLES:
        found = _pattern(name).findall(text)
        if len(found) != 1:
            raise ValueError(
                f"expected one generated table {name!r} between {START.format(name=name)!r} "
                f"and {END!r}, found {len(found)}"
            )
        tables[name] = found[0].rstrip("\n")
    return tables


def render(text: str) -> str:
    """``text`` (a README) with every generated table rendered afresh from the registries."""
    read_tables(text)  # every table present once
    for name, table in TABLES.items():
        replacement = f"{START.format(name=name)}\n{table()}\n{END}"
        text = _pattern(name).sub(lambda _match, new=replacement: new, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.devtools.readme [PATH] [--check]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=README, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="only say whether a table differs")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    updated = render(text)
    stale = [name for name, table in read_tables(text).items() if table != TABLES[name]()]
    if not stale:
        print(f"{args.path}: the generated tables are up to date")
        return 0
    if args.check:
        print(
            f"{args.path}: stale tables {', '.join(stale)}; run python -m workbench.devtools.readme"
        )
        return 1
    args.path.write_text(updated, encoding="utf-8")
    print(f"{args.path}: rewrote the tables {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

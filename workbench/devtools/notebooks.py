"""Execute the notebooks of ``notebooks/`` and store them with their outputs.

The committed notebooks hold their outputs, figures included as the plotly bundle plus a PNG
(`workbench.viz.notebook`), so that nbconvert HTML and GitHub show them without running anything.
After changing a notebook or the code it calls, ``python -m workbench.devtools.notebooks``
(``make notebooks``) executes every notebook (or the ones named) top to bottom in a fresh kernel
and writes it back in place; it prints each notebook's time and its slowest cells.

``tests/notebooks/test_notebooks.py`` executes every notebook with `execute` (the same kernel
settings) and checks the committed files with `problems`.

The kernel (`kernel_env`) imports the packages of the checkout that holds the notebook (its root
first on ``PYTHONPATH``) and, on a machine of at most two cores, runs torch on one thread
(``OMP_NUM_THREADS=1``): two threads contending with other processes were 2.5x slower there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The root of a source checkout (an installed wheel has no notebooks: pass paths)."""
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 1200
"""Longest a cell may run: each cell takes well under a minute on two quiet cores."""
MAX_BYTES = 3_000_000
"""Largest a committed notebook may be (outputs included)."""
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STATIC_IMAGES = ("image/png", "image/svg+xml")


def notebook_paths(directory: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks of ``directory``, sorted by name."""
    return sorted(directory.glob("*.ipynb"))


def kernel_env(root: Path = ROOT) -> dict[str, str]:
    """The environment of the executing kernel: this process's, with ``root`` first on
    ``PYTHONPATH`` and, on at most two cores, ``OMP_NUM_THREADS=1`` unless it is set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    if (os.cpu_count() or 1) <= 2:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass(frozen=True)
class Executed:
    """An executed notebook.

    Attributes:
        notebook: the notebook with its outputs (an ``nbformat.NotebookNode``).
        seconds: wall time of the whole execution, kernel start included.
        cell_seconds: ``{cell index: seconds}`` of every code cell.
    """

    notebook: Any
    seconds: float
    cell_seconds: dict[int, float]


def execute(path: Path, *, timeout: int = CELL_TIMEOUT_S) -> Executed:
    """Run the notebook at ``path`` top to bottom in a fresh ``python3`` kernel started in its
    folder, with `kernel_env` of the checkout holding it; raises
    ``nbclient.exceptions.CellExecutionError`` at the first cell that fails and
    ``CellTimeoutError`` past ``timeout`` seconds in one cell."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", store_widget_state=False
    )
    start = time.perf_counter()
    client.execute(cwd=str(path.parent), env=kernel_env(path.resolve().parents[1]))
    seconds = time.perf_counter() - start
    return Executed(notebook, seconds, cell_times(notebook))


def cell_times(notebook: Any) -> dict[int, float]:
    """``{cell index: seconds}`` from the timing metadata nbclient records."""
    times = {}
    for index, cell in enumerate(notebook.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            times[index] = (_timestamp(end) - _timestamp(start)).total_seconds()
    return times


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def normalise(notebook: Any) -> Any:
    """``notebook`` as it is committed: no timing metadata (it changes on every run), no widget
    state, consecutive outputs of one stream merged (how prints split into outputs depends on
    timing), every cell with an id (nbformat 4.5)."""
    import nbformat

    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if "outputs" in cell:
            cell.outputs = _merge_streams(cell.outputs)
    notebook.nbformat, notebook.nbformat_minor = 4, max(notebook.nbformat_minor, 5)
    _, normalised = nbformat.validator.normalize(notebook)  # adds missing cell ids
    notebook = nbformat.from_dict(normalised)
    nbformat.validate(notebook)
    return notebook


def _merge_streams(outputs: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.get("output_type") == previous.get("output_type") == "stream"
            and output.get("name") == previous.get("name")
        ):
            previous["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def problems(notebook: Any, size: int | None = None) -> list[str]:
    """What keeps ``notebook`` (as read from a file of ``size`` bytes) from being committed: a code
    cell not executed or out of order, an error output, a figure without a static image, a widget
    (static viewers show nothing), a cell without an id, a file over `MAX_BYTES`."""
    found = []
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"code cells not executed once, top to bottom: execution counts {counts}")
    for index, cell in enumerate(notebook.cells):
        if not cell.get("id"):
            found.append(f"cell {index} has no id")
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.get("output_type") == "error":
                found.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
            if PLOTLY_MIME in data and not any(mime in data for mime in STATIC_IMAGES):
                found.append(f"cell {index}: a figure without a static image")
            if WIDGET_MIME in data:
                found.append(f"cell {index}: a widget output (static viewers show nothing)")
    if size is not None and size > MAX_BYTES:
        found.append(f"{size} bytes, more than {MAX_BYTES}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench.devtools.notebooks",
        description="Execute notebooks and write them back with their outputs.",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="default: every notebook")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    import nbformat

    status = 0
    for path in args.paths or notebook_paths():
        executed = execute(path, timeout=args.timeout)
        notebook = normalise(executed.notebook)
        nbformat.write(notebook, path)
        size = path.stat().st_size
        slowest = sorted(executed.cell_seconds.items(), key=lambda item: -item[1])[:3]
        cells = ", ".join(f"cell {index} {seconds:.1f} s" for index, seconds in slowest)
        print(f"{path.name}: {executed.seconds:.1f} s ({cells}), {size / 1e6:.2f} MB")
        for problem in problems(notebook, size):
            print(f"  {problem}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

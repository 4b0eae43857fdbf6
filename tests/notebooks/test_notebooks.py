"""Every notebook under notebooks/ runs top to bottom without error, and the committed files hold
their outputs, with a static image beside every figure (what nbconvert HTML and GitHub show).

After changing a notebook, or the code it calls in a way that changes its outputs, run
``python -m workbench.devtools.notebooks`` (``make notebooks``) and commit the result.
"""

from pathlib import Path

import nbformat
import pytest

from workbench.devtools import notebooks
from workbench.viz import notebook as viz_notebook

NOTEBOOKS = notebooks.notebook_paths(Path(__file__).parents[2] / "notebooks")


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebook_holds_its_outputs(path):
    committed = nbformat.read(path, as_version=4)
    nbformat.validate(committed)  # cell ids included
    assert notebooks.problems(committed, path.stat().st_size) == [], (
        f"run `python -m workbench.devtools.notebooks {path.name}` and commit the result"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path):
    executed = notebooks.execute(path).notebook  # CellExecutionError names the failing cell
    outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    figures = [
        output["data"] for output in outputs if notebooks.PLOTLY_MIME in output.get("data", {})
    ]
    reason = viz_notebook.unavailable_reason()
    for data in figures:  # with an exporter an image, without one the note that says why
        assert ("image/png" in data) == (reason is None), reason or data.get("text/plain")

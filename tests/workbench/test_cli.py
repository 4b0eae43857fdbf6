import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import toy_tasks
from workbench import __version__
from workbench.cli import app, parse_overrides

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
HEAVY = ("sae_lens", "transformer_lens", "transformers")
"""Packages that take seconds to import: ``workbench --help`` must not load them."""


@pytest.mark.parametrize(
    ("command", "text"),
    [(["stability"], "eval_metrics: [stability]"), (["run"], "sparse=[null]")],
)
def test_help_shows_brackets_as_written(command: list[str], text: str) -> None:
    """Help texts are not read as markup (where ``[null]`` would vanish as a tag)."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert text in " ".join(result.output.split())


def test_help_imports_no_heavy_package():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workbench.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "typer" in imported  # the trace of imports was read
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"workbench {__version__}"


def test_tasks_list_names_every_task_with_its_description_and_paper():
    result = runner.invoke(app, ["tasks", "list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name, description, paper in toy_tasks.describe():
        assert name in result.output
        assert description in result.output and paper in result.output
    assert "``" not in result.output


def test_tasks_sample_joint_recall_is_deterministic():
    first = runner.invoke(app, ["tasks", "sample", "joint_recall", "--seed", "0"])
    again = runner.invoke(app, ["tasks", "sample", "joint_recall", "--seed", "0"])
    other = runner.invoke(app, ["tasks", "sample", "joint_recall", "--seed", "1"])
    assert first.exit_code == 0, first.output
    assert first.output == again.output != other.output


def test_tasks_sample_with_overrides_and_several_examples():
    result = runner.invoke(
        app,
        [
            "tasks",
            "sample",
            "assoc_recall",
            "--n",
            "2",
            "--set",
            "n_pairs=3",
            "--set",
            "seq_len=16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "'n_pairs': 3" in result.output and "example 1" in result.output


def test_tasks_sample_bad_parameter_is_a_clear_error():
    result = runner.invoke(app, ["tasks", "sample", "assoc_recall", "--set", "n_pairs=0"])
    assert result.exit_code != 0
    assert "n_pairs" in result.output


def test_parse_overrides():
    assert parse_overrides(["a=3", "b=0.5", "c=None", "d=text"]) == {
        "a": 3,
        "b": 0.5,
        "c": None,
        "d": "text",
    }
    with pytest.raises(typer.BadParameter, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_tasks_overview_writes_summary_and_figures(tmp_path):
    out = tmp_path / "tasks"
    result = runner.invoke(app, ["tasks", "overview", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == set(toy_tasks.names())
    for stats in summary["tasks"].values():
        assert 0 < stats["ideal_density"] <= 1
    assert (out / "figures" / "joint_recall_relevance.html").stat().st_size > 1000
    assert "plotly" in (out / "index.html").read_text()

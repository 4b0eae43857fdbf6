"""Every ```python block of the README runs on its own (a fresh namespace, in a temp folder): a
reader can copy any one of them. The README's tables and its figure's caption are generated."""

import json
import re
from pathlib import Path

import pytest

from workbench.devtools import readme

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs_on_its_own(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"{README}, python block {index}", "exec"), {})


def test_readme_tables_match_the_registries():
    """The tables of sparse methods and toy tasks are generated: after adding or changing a
    method or a task, run ``python -m workbench.devtools.readme``."""
    found = readme.read_tables(README.read_text(encoding="utf-8"))
    for name, table in readme.TABLES.items():
        assert found[name] == table(), (
            f"README's {name} table is stale: python -m workbench.devtools.readme"
        )


def test_readme_render_replaces_only_the_tables(tmp_path):
    stale = "intro\n\n" + "\n\n".join(
        f"{readme.START.format(name=name)}\n| old |\n{readme.END}" for name in readme.TABLES
    )
    path = tmp_path / "README.md"
    path.write_text(stale + "\n\nend\n", encoding="utf-8")
    assert readme.main([str(path), "--check"]) == 1
    assert path.read_text(encoding="utf-8") == stale + "\n\nend\n"
    assert readme.main([str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith("intro\n\n") and text.endswith("\n\nend\n")
    assert readme.read_tables(text) == {name: table() for name, table in readme.TABLES.items()}
    assert readme.main([str(path), "--check"]) == 0
    path.write_text("no tables", encoding="utf-8")
    with pytest.raises(ValueError, match="sparse-methods"):
        readme.main([str(path)])


def load_figure_script():
    """``docs/make_readme_figure.py`` as a module (docs/ is no package)."""
    import importlib.util

    path = README.parent / "docs" / "make_readme_figure.py"
    spec = importlib.util.spec_from_file_location("make_readme_figure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_caption_is_generated_from_the_numbers_of_its_figure():
    """The caption of the README's image quotes ``docs/emergence_quick.json``, written with the
    image by ``python docs/make_readme_figure.py`` from the quick run of today's spec."""
    from workbench.experiments import config_hash, load_spec

    script = load_figure_script()
    found = script.read_caption(README.read_text(encoding="utf-8"))
    assert found == script.expected_caption(), "stale caption: python docs/make_readme_figure.py"
    assert all(len(line) <= 100 for line in found.splitlines())
    quick = json.loads(script.NUMBERS.read_text(encoding="utf-8"))
    configs = load_spec("emergence").quick_variant().configs()
    assert {run["config_hash"] for run in quick["runs"]} == {config_hash(c) for c in configs}, (
        "the quick emergence spec changed: python docs/make_readme_figure.py"
    )
    assert script.IMAGE.stat().st_size > 10_000


def test_readme_shows_each_dashboard_tab_and_the_command_to_start_it():
    """One screenshot per tab (``python docs/make_dashboard_screenshots.py`` takes them)."""
    from workbench.dashboard.page import TABS

    text = README.read_text(encoding="utf-8")
    assert "workbench dashboard runs" in text and "workbench report " in text
    for value, label, _ in TABS:
        image = f"docs/dashboard_{value}.png"
        assert f"![{label} tab]({image})" in text
        assert (README.parent / image).stat().st_size > 10_000


def test_every_image_and_file_the_readme_links_exists():
    """Images (``![...](path)``) and links to files of the repository (``[...](path)``, not web
    addresses or anchors) point at committed paths."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [target for target in targets if not re.match(r"[a-z]+:", target)]
    assert any(target.endswith(".png") for target in local)
    missing = [target for target in local if not (README.parent / target).exists()]
    assert not missing, missing

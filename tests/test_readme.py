"""Every ```python block of the README runs (in order, sharing one namespace, in a temp folder)."""

import re
from pathlib import Path

import pytest

from workbench.devtools import readme

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in BLOCKS:
        exec(compile(block, str(README), "exec"), namespace)


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

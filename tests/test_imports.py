"""No import cycle between the project's modules (`workbench.devtools.imports`, which is also
``python -m workbench.devtools.imports``)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workbench.devtools import imports


@pytest.fixture(scope="module")
def cycles() -> list[imports.Cycle]:
    return imports.find_cycles()


def _describe(cycles: list[imports.Cycle]) -> str:
    return "\n\n".join(cycle.describe() for cycle in cycles)


@pytest.mark.parametrize("package", ["kernels", "toy_tasks"])
def test_no_cycle_passes_through_the_package(cycles: list[imports.Cycle], package: str) -> None:
    touching = [
        cycle
        for cycle in cycles
        if any(module.split(".")[0] == package for module in cycle.modules)
    ]
    assert not touching, _describe(touching)


def test_no_cycle_anywhere(cycles: list[imports.Cycle]) -> None:
    assert not cycles, _describe(cycles)


def _package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.registry import get\n",
            "pkg/registry.py": "from . import methods\n\ndef get():\n    return methods\n",
            "pkg/methods.py": "def main():\n    from pkg.viewer import draw\n",
            "pkg/viewer.py": "import pkg\n",
            "pkg/types.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import other\n"
            ),
            "pkg/other.py": "from pkg.types import *\n",
            "pkg/clean.py": "import pkg.registry\n",
        },
    )
    edges = {
        (edge.source, edge.target, edge.kind) for edge in imports.import_graph(tmp_path, ["pkg"])
    }
    assert ("pkg", "pkg.registry", "module") in edges
    assert ("pkg.registry", "pkg.methods", "module") in edges  # relative, a submodule
    assert ("pkg.methods", "pkg.viewer", "lazy") in edges
    assert ("pkg.types", "pkg.other", "typing") in edges
    assert ("pkg.clean", "pkg.registry", "module") in edges
    found = imports.find_cycles(tmp_path, ["pkg"])
    assert [cycle.modules for cycle in found] == [
        ("pkg", "pkg.methods", "pkg.registry", "pkg.viewer"),
        ("pkg.other", "pkg.types"),
    ]
    assert not any(cycle.at_import_time for cycle in found)
    assert found[0].path == ("pkg", "pkg.registry", "pkg.methods", "pkg.viewer", "pkg")
    assert imports.main(["pkg", "--root", str(tmp_path)]) == 1


def test_a_module_level_cycle_is_marked_as_one(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "from pkg import a\n"},
    )
    (cycle,) = imports.find_cycles(tmp_path, ["pkg"])
    assert cycle.at_import_time
    assert "module-level" in cycle.describe()


def test_the_command_exits_0_without_a_cycle() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workbench.devtools.imports", "kernels", "toy_tasks"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no import cycle" in result.stdout

"""The built distribution holds what the workbench reads at run time: installed away from the
source tree, it finds and loads the bundled experiment specs.

A wheel is built from a copy of the build's inputs (setuptools builds in place: the copy keeps the
source tree clean and a stale ``build/`` folder out of the wheel), installed into a plain target
folder (no dependencies: they come from the test environment) and imported from a subprocess whose
working directory lies outside the repository. Installs into a full virtual environment would
download every dependency and take minutes; this check takes a few seconds.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from workbench.experiments import load_spec, spec_names

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "toy_tasks", "workbench")
BUILD_INPUTS = ("pyproject.toml", "README.md", "experiments", *PACKAGES)
"""What the build reads (pyproject.toml maps experiments/ into the workbench package)."""

SETUPTOOLS_FOR_WHEELS = Version("70.1")
"""The first setuptools that builds wheels without the separate `wheel` package."""

CHECK = """
import json
import workbench
from workbench.experiments import load_spec, spec_names
from workbench.experiments.spec import EXPERIMENTS_DIR
print(json.dumps({
    "file": workbench.__file__,
    "specs_dir": str(EXPERIMENTS_DIR),
    "names": spec_names(),
    "specs": [load_spec(name).to_dict() for name in spec_names()],
}))
"""


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder the wheel was installed into."""
    try:
        setuptools = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        setuptools = Version("0")
    assert setuptools >= SETUPTOOLS_FOR_WHEELS, (
        f"building the wheel offline needs setuptools>={SETUPTOOLS_FOR_WHEELS} in the test "
        f"environment (found {setuptools}); the dev extra installs it"
    )
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    # No build isolation, no index: the build uses the environment's setuptools and stays offline.
    _pip("wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root))
    (wheel,) = root.glob("*.whl")
    # --target installs beside the environment and never uninstalls its own (editable) install.
    target = root / "installed"
    _pip("install", str(wheel), "--no-deps", "--no-index", "--target", str(target))
    return target


def test_wheel_holds_every_module_and_the_specs(installed):
    for package in PACKAGES:
        for module in (REPO / package).rglob("*.py"):
            assert (installed / module.relative_to(REPO)).is_file(), f"{module} not in the wheel"
    bundled = installed / "workbench" / "experiments" / "specs"
    assert sorted(path.name for path in bundled.glob("*.yaml")) == sorted(
        path.name for path in (REPO / "experiments").glob("*.yaml")
    )


def test_installed_wheel_finds_and_loads_the_specs_away_from_the_source_tree(installed):
    workdir = installed.parent / "elsewhere"
    workdir.mkdir()
    # PYTHONPATH comes before site-packages, and the editable install's finder runs after the
    # path-based one: the installed copy is the one imported (checked below).
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(installed), found["file"]
    assert found["names"], "the installed workbench finds no bundled specs"
    assert found["names"] == spec_names()
    assert found["specs"] == [json.loads(json.dumps(load_spec(n).to_dict())) for n in spec_names()]
    assert Path(found["specs_dir"]) == installed / "workbench" / "experiments" / "specs"

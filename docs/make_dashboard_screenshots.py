"""Screenshots of the dashboard's tabs for the README.

    python docs/make_dashboard_screenshots.py               # or: make dashboard-screenshots
    python docs/make_dashboard_screenshots.py --runs runs   # another run store

Runs (or reuses: runs are cached by config hash) the quick variants of the ``emergence`` and
``attention_saes`` experiments under ``runs/`` of the repository (a few minutes on 2 CPU cores the
first time), serves the dashboard over that store on 127.0.0.1 and takes one screenshot per tab
in a headless Chromium:

- ``docs/dashboard_runs.png``: the run index, the training curves of the finished runs and the
  power-law fit of the emergence analysis;
- ``docs/dashboard_attention.png``: the layer x head grid and one head's token-labelled pattern
  with the relevant keys framed and top-k's selection tinted, its density, recall and error;
- ``docs/dashboard_methods.png``: several sparse methods on one model (fidelity, layouts);
- ``docs/dashboard_sae.png``: an SAE's features (density, head attribution, task variables, the
  top-activating examples).

It needs the ``browser`` extra (``pip install -e ".[browser]"``: Dash and Selenium), the ``sae``
extra and Debian's ``chromium`` and ``chromium-driver`` (``workbench.devtools.browser``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXPERIMENTS = ("emergence", "attention_saes")
WIDTH = 1400
MAX_HEIGHT = 2600
"""Pixels of the window: the height follows the tab's content up to this."""
TIMEOUT = 300.0
"""Seconds a tab may take to draw (an SAE's feature report imports sae-lens and runs the model)."""


def image(name: str) -> Path:
    """The README's screenshot of tab ``name``."""
    return DOCS / f"dashboard_{name}.png"


def make_runs(runs: Path) -> None:
    """The quick runs of `EXPERIMENTS` under ``runs`` (finished ones are reused)."""
    from workbench.experiments import run_experiment

    for name in EXPERIMENTS:
        run_experiment(name, quick=True, runs_dir=runs, progress=False)


def fit_to_content(driver: Any, ready: Callable[[], Any], what: str) -> None:
    """Resize the window to the page's height (at most `MAX_HEIGHT`) until it no longer changes
    (figures redraw at the new size)."""
    from workbench.devtools.browser import wait_for

    for _ in range(4):
        wait_for(ready, what, TIMEOUT)
        time.sleep(1.0)  # let the figures settle
        page = driver.execute_script("return document.documentElement.scrollHeight")
        window = driver.execute_script("return window.innerHeight")
        height = min(max(int(page), 900), MAX_HEIGHT)
        if abs(height - int(window)) <= 2:
            return
        driver.set_window_size(WIDTH, height + driver.get_window_size()["height"] - int(window))


def shoot(driver: Any, name: str, ready: Callable[[], Any], what: str) -> Path:
    """Wait until ``ready()`` holds, fit the window to the tab and save its screenshot."""
    fit_to_content(driver, ready, what)
    path = image(name)
    driver.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def dense_run(runs: Path) -> tuple[str, str]:
    """The labels of the attention source and of the SAE of the dense ``attention_saes`` run (the
    tabs start on the first run, a sparse one)."""
    from workbench.dashboard.data import Catalogue

    catalogue = Catalogue(runs)
    keys = [
        row["id"]
        for row in catalogue.index()
        if row["experiment"] == "attention_saes" and row.get("method") == "dense"
    ]
    if not keys:
        raise FileNotFoundError(f"no dense attention_saes run under {runs}")
    source = dict(catalogue.sources())[f"model:{keys[0]}"]
    sae = next(label for value, label in catalogue.saes() if value.startswith(f"{keys[0]}/"))
    return source, sae


def screenshots(runs: Path) -> list[Path]:
    """Serve the dashboard over ``runs`` and take the screenshot of every tab."""
    from selenium.webdriver.common.by import By

    from workbench.dashboard import create_app, ids
    from workbench.devtools.browser import (
        choose,
        console_errors,
        drawn,
        headless_chromium,
        open_tab,
        serving,
        wait_for,
    )

    source, sae = dense_run(runs)
    choices = {
        "attention": [(ids.ATTENTION_SOURCE, source)],
        "methods": [(ids.METHODS_SOURCE, source)],
        "sae": [(ids.SAE_CHOICE, sae)],
    }

    driver = headless_chromium(WIDTH, 1000)
    written = []
    try:
        # the page names the store as given: relative to the working directory where it is inside
        shown = Path(os.path.relpath(runs)) if runs.resolve().is_relative_to(Path.cwd()) else runs
        with serving(create_app(shown)) as url:
            driver.get(url)
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".tab"), "the tabs")
            tabs: Sequence[tuple[str, str, Callable[[], Any], str]] = (
                (
                    "runs",
                    "Runs",
                    lambda: (
                        drawn(driver, ".curves-eval_loss") and drawn(driver, f"#{ids.RUNS_FIT}")
                    ),
                    "the training curves and the fit",
                ),
                (
                    "attention",
                    "Attention",
                    lambda: (
                        drawn(driver, f"#{ids.ATTENTION_GRID}")
                        and drawn(driver, f"#{ids.ATTENTION_PATTERN}") >= 2
                    ),
                    "the grid and the pattern with its selection",
                ),
                (
                    "methods",
                    "Methods",
                    lambda: (
                        drawn(driver, f"#{ids.METHODS_FIDELITY}")
                        and drawn(driver, f"#{ids.METHODS_LAYOUTS}")
                    ),
                    "the fidelity and the layouts",
                ),
                (
                    "sae",
                    "SAE features",
                    lambda: (
                        drawn(driver, f"#{ids.SAE_FIGURES}")
                        and drawn(driver, f"#{ids.SAE_EXAMPLES}")
                    ),
                    "the SAE's feature figures",
                ),
            )
            for name, label, ready, what in tabs:
                driver.set_window_size(WIDTH, 1000)
                open_tab(driver, label)
                wait_for(ready, what, TIMEOUT)
                for dropdown, option in choices.get(name, []):
                    choose(driver, dropdown, option)
                    time.sleep(1.0)  # the callbacks start
                written.append(shoot(driver, name, ready, what))
            errors = console_errors(driver)
            if errors:
                raise RuntimeError(f"the browser's console has errors: {errors}")
    finally:
        driver.quit()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "runs", help="the run store (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    from workbench.devtools.browser import missing_browser

    problem = missing_browser()
    if problem:
        print(f"cannot take screenshots: {problem}", file=sys.stderr)
        return 1
    make_runs(args.runs)
    screenshots(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

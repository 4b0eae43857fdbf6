"""The dashboard in a headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium; `workbench.devtools.browser`). Without them the tests here are skipped, saying which is
missing; CI installs both (``.ci/run``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench.devtools.browser import headless_chromium, missing_browser, serving


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = missing_browser()
    if problem:
        pytest.skip(f"headless Chromium unavailable: {problem}")
    driver = headless_chromium(1400, 1100)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dashboard_url(dashboard_runs: Path) -> Iterator[str]:
    """The dashboard over the test runs, served from a thread for the module's tests."""
    from workbench.dashboard import create_app

    with serving(create_app(dashboard_runs)) as url:
        yield url

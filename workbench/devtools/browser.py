"""A Dash app in a headless Chromium: what the browser tests (``tests/browser``) and the README's
screenshots (``docs/make_dashboard_screenshots.py``) share.

`serving(app)` runs a Dash app's Flask server on a free port of 127.0.0.1 in a thread for the
duration of a ``with`` block; `headless_chromium()` starts Chromium through Selenium with the
browser's console log kept, driven by the ``chromedriver`` of Debian's ``chromium-driver``
package (Selenium downloads nothing: both programs must be installed; `missing_browser` says
which is not). `wait_for`, `drawn`, `open_tab`, `choose` and `console_errors` read and drive the
page.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
"""Names of the browser looked up on ``PATH`` (``$BROWSER_PATH`` first)."""
CHROMEDRIVER = "chromedriver"
INSTALL = "apt-get install chromium chromium-driver"


def chromium_path() -> str | None:
    """The browser: ``$BROWSER_PATH``, else the first of `CHROMIUM` on ``PATH``."""
    given = os.environ.get("BROWSER_PATH")
    if given:
        return given if os.path.isfile(given) else None
    return next((path for name in CHROMIUM if (path := shutil.which(name))), None)


def missing_browser() -> str | None:
    """Why Chromium cannot be driven here (None when it can)."""
    missing = [
        name
        for name, path in (
            ("chromium", chromium_path()),
            (CHROMEDRIVER, shutil.which(CHROMEDRIVER)),
        )
        if path is None
    ]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian: {INSTALL})"
    return None


def headless_chromium(width: int = 1400, height: int = 1000) -> Any:
    """A Selenium driver of a headless Chromium window of ``width x height`` pixels whose console
    messages ``driver.get_log("browser")`` returns; ``RuntimeError`` when Chromium or
    chromedriver is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    problem = missing_browser()
    if problem:
        raise RuntimeError(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)


@contextmanager
def serving(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the Dash ``app`` on a free port of ``host`` in a thread; yields its URL."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server(host, 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition()`` until it returns something true and return it; ``TimeoutError``
    naming ``what`` after ``timeout`` seconds (an exception inside ``condition``, such as an
    element replaced while it was read, counts as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


DRAWN = """
const graph = document.querySelector(arguments[0] + ' .js-plotly-plot');
if (!graph || !graph._fullData) { return 0; }
const drawn = graph.querySelectorAll('.trace, .hm, image, .table').length;
return graph._fullData.length > 0 && drawn > 0 ? graph._fullData.length : 0;
"""


def drawn(driver: Any, selector: str) -> int:
    """How many traces the plotly graph under the CSS ``selector`` drew (0: none, or not yet)."""
    return driver.execute_script(DRAWN, selector)


def open_tab(driver: Any, label: str) -> None:
    """Click the Dash tab labelled ``label``."""
    from selenium.webdriver.common.by import By

    tabs = driver.find_elements(By.CSS_SELECTOR, ".tab")
    found = [tab for tab in tabs if tab.text == label]
    if not found:
        raise ValueError(f"label must be a tab of the page, got {label!r}")
    found[0].click()


def choose(driver: Any, dropdown: str, option: str, timeout: float = 60.0) -> None:
    """Pick ``option`` (its label) of the Dash dropdown whose id is ``dropdown``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, dropdown).click()
    found = wait_for(
        lambda: [
            element
            for element in driver.find_elements(By.CSS_SELECTOR, "[role=option]")
            if element.text.strip() == option
        ],
        f"option {option} of {dropdown}",
        timeout,
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", found[0])
    found[0].click()


def console_errors(driver: Any) -> list[str]:
    """The error messages of the browser's console since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]

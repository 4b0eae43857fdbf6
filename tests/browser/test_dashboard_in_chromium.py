"""The dashboard as a reader sees it: every tab draws its figures, changing the sparse method
changes the density shown, clicking a head of the grid opens its pattern, the page loads nothing
from the network and the browser's console stays free of errors. Screenshots of each tab go to
the test's temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from workbench.dashboard import ids
from workbench.devtools.browser import choose, console_errors, drawn, open_tab, wait_for


def screenshot(browser: Any, folder: Path, name: str) -> Path:
    path = folder / f"dashboard_{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


@pytest.fixture(scope="module")
def page(browser: Any, dashboard_url: str) -> Any:
    browser.get(dashboard_url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tab"), "the tabs")
    return browser


def test_the_page_loads_its_scripts_from_the_server_only(page, dashboard_url):
    sources = page.execute_script(
        "return Array.from(document.scripts).map(s => s.src).filter(Boolean)"
    )
    assert sources and all(src.startswith(dashboard_url) for src in sources), sources
    assert console_errors(page) == []


def test_runs_tab_draws_the_curves_and_the_fit(page, tmp_path_factory):
    open_tab(page, "Runs")
    wait_for(lambda: drawn(page, ".curves-eval_loss") >= 2, "the loss curves of two runs")
    assert drawn(page, ".curves-relevant_mass") and drawn(page, ".curves-eval_accuracy")
    wait_for(lambda: drawn(page, f"#{ids.RUNS_FIT}"), "the power-law fit")
    table = page.find_element(By.ID, ids.RUNS_TABLE).text
    assert "unreadable" in table and "empty" in table and "ParserError" in table
    screenshot(page, tmp_path_factory.mktemp("screenshots"), "runs")
    assert console_errors(page) == []


def density(page: Any) -> str:
    return page.find_element(By.ID, ids.ATTENTION_DENSITY).text


def test_attention_tab_recomputes_the_density_when_the_method_changes(page, tmp_path_factory):
    open_tab(page, "Attention")
    wait_for(lambda: drawn(page, f"#{ids.ATTENTION_GRID}"), "the layer x head grid")
    wait_for(lambda: drawn(page, f"#{ids.ATTENTION_PATTERN}") >= 3, "the pattern with overlays")
    before = wait_for(lambda: density(page) if density(page) != "–" else None, "a density")
    choose(page, ids.ATTENTION_METHOD, "strided")
    after = wait_for(lambda: density(page) not in (before, "–") and density(page), "a new density")
    assert 0 < float(after) <= 1 and after != before
    names = page.execute_script(
        f"return document.querySelector('#{ids.ATTENTION_PATTERN} .js-plotly-plot')"
        "._fullData.map(t => t.name)"
    )
    assert any(name.startswith("kept by strided(") for name in names), names
    screenshot(page, tmp_path_factory.mktemp("screenshots"), "attention")
    assert console_errors(page) == []


def title(page: Any) -> str:
    return page.find_element(By.CSS_SELECTOR, f"#{ids.ATTENTION_PATTERN} .gtitle").text


def test_clicking_a_head_in_the_grid_opens_its_pattern(page):
    open_tab(page, "Attention")
    wait_for(lambda: "layer 1 head 0" in title(page), "the pattern of layer 1, head 0")
    cells = page.find_element(By.CSS_SELECTOR, f"#{ids.ATTENTION_GRID} .nsewdrag")
    width, height = cells.size["width"], cells.size["height"]
    # The grid has layers as rows (layer 0 on top) and heads as columns: the top right cell.
    ActionChains(page).move_to_element_with_offset(cells, width / 4, -height / 4).click().perform()
    wait_for(lambda: "layer 0 head 1" in title(page), "the pattern of layer 0, head 1")
    assert page.find_element(By.ID, ids.ATTENTION_LAYER).text == "0"
    assert page.find_element(By.ID, ids.ATTENTION_HEAD).text == "1"
    assert console_errors(page) == []


def test_methods_tab_compares_methods_and_draws_their_layouts(page, tmp_path_factory):
    open_tab(page, "Methods")
    wait_for(lambda: drawn(page, f"#{ids.METHODS_FIDELITY}") >= 2, "the fidelity figure")
    wait_for(lambda: drawn(page, f"#{ids.METHODS_LAYOUTS}") >= 5, "the layouts of five methods")
    assert "top_k(k=5)" in page.find_element(By.ID, ids.METHODS_TABLE).text
    screenshot(page, tmp_path_factory.mktemp("screenshots"), "methods")
    assert console_errors(page) == []


def test_sae_tab_says_that_no_run_has_an_sae(page):
    open_tab(page, "SAE features")
    text = wait_for(lambda: page.find_element(By.ID, ids.SAE_MESSAGE).text, "the SAE message")
    assert "workbench sae train" in text
    assert console_errors(page) == []


def test_every_tab_drew_with_nothing_fetched_from_another_host(page, dashboard_url):
    """After every tab has drawn (the tests above), each resource the page fetched (scripts,
    plotly.js chunks, styles, fonts, callbacks) came from the dashboard's own server."""
    for label in ("Runs", "Attention", "Methods", "SAE features"):
        open_tab(page, label)
    fetched = page.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert fetched and [url for url in fetched if not url.startswith(dashboard_url)] == []

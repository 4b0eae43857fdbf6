"""The dashboard without a browser: the catalogue of a run store, the panels' figures, the
callbacks (as functions and through Dash's HTTP endpoint, with Flask's test client) and
``workbench report``. The store is the session fixture ``dashboard_runs`` (tests/conftest.py)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from dash.exceptions import PreventUpdate
from typer.testing import CliRunner

import workbench.sparse
from workbench.cli import app as cli
from workbench.dashboard import attention_tab, ids, methods_tab, page, panels, runs_tab, sae_tab
from workbench.dashboard.app import create_app
from workbench.dashboard.data import UNREADABLE, Catalogue
from workbench.dashboard.report import write_report
from workbench.metrics.fidelity import head_selection, layer_fidelity
from workbench.sparse.patch import SparseCore
from workbench.viz.attention import Window

runner = CliRunner()


@pytest.fixture(scope="module")
def catalogue(dashboard_runs: Path) -> Catalogue:
    return Catalogue(dashboard_runs)


@pytest.fixture(scope="module")
def model_source(catalogue: Catalogue) -> str:
    """The dense run's model."""
    (dense,) = [row["id"] for row in catalogue.index() if row.get("method") == "dense"
                and row["status"] == "finished"]  # fmt: skip
    return f"model:{dense}"


def test_catalogue_lists_every_run_with_its_status(catalogue):
    rows = {row["run"]: row for row in catalogue.index()}
    assert sorted(row["status"] for row in rows.values()) == [
        "empty", "finished", "finished", UNREADABLE
    ]  # fmt: skip
    assert "ParserError" in rows["broken000000"]["error"]
    assert rows["half00000000"]["last_step"] is None and rows["half00000000"]["checkpoint"] == "no"
    finished = [row for row in rows.values() if row["status"] == "finished"]
    assert {row["method"] for row in finished} == {"dense", "top_k"}
    assert all(row["checkpoint"] == "yes" and row["traces"] == "final" for row in finished)
    kinds = sorted(value.split(":")[0] for value, _ in catalogue.sources())
    assert kinds == ["model", "model", "trace", "trace"]
    assert [key for key, _ in catalogue.fits()] == ["emergence/fit000000000"]


def test_catalogue_refuses_bad_arguments_and_unknown_keys(dashboard_runs, catalogue):
    with pytest.raises(ValueError, match="examples"):
        Catalogue(dashboard_runs, examples=0)
    with pytest.raises(ValueError, match="root"):
        Catalogue(3)
    with pytest.raises(FileNotFoundError, match="root"):
        Catalogue(dashboard_runs / "missing")
    with pytest.raises(FileNotFoundError, match="traces"):
        Catalogue(dashboard_runs, traces=[dashboard_runs / "nothing"])
    with pytest.raises(KeyError, match="unknown attention source"):
        catalogue.subject("model-of/nothing")
    with pytest.raises(KeyError, match="no run"):
        catalogue.subject("model:../../etc")


def test_runs_tab_filters_the_index_and_draws_the_curves_and_the_fit(catalogue):
    rows = catalogue.index()
    finished = [row["id"] for row in rows if row["status"] == "finished"]
    assert runs_tab.default_selection(rows) == finished
    count, shown = runs_tab.index_table(rows, None, None)
    assert count.children == "4 of 4 runs" and len(shown.children[1].children) == 4
    count, _ = runs_tab.index_table(rows, "TOP_K", None)
    assert count.children == "1 of 4 runs"
    count, shown = runs_tab.index_table(rows, None, ["unreadable"])
    (row,) = shown.children[1].children
    assert count.children == "1 of 4 runs" and "ParserError" in row.title
    assert row.children[-1].children.endswith(" ...")  # the error cut to one line
    graphs, notes = runs_tab.curves(catalogue, [*finished, "recall/half00000000"])
    names = [item.children.className.split()[-1] for item in graphs]
    assert names[:3] == ["curves-eval_loss", "curves-eval_accuracy", "curves-loss"]
    assert "curves-relevant_mass" in names and "curves-stability_top_k_margin" in names
    assert [note.children for note in notes] == ["recall/half00000000: no metrics logged yet"]
    figures, _ = panels.curves_figures({key: catalogue.run(key) for key in finished})
    legend = {trace.name for trace in figures["eval_loss"].data}
    assert any(name.startswith("dense ") for name in legend)
    assert any(name.startswith("top_k(k=3) ") for name in legend)
    fit, exponents = runs_tab.fit(catalogue, "emergence/fit000000000").children
    assert "emergence time" in fit.figure.layout.title.text
    assert "paper (toy_model)" in {trace.name.split(":")[0] for trace in fit.figure.data}
    (line,) = exponents.figure.data  # all lengths, then from T = 16 (from 32: two points, no fit)
    assert list(line.x) == [8, 16] and line.name == "exponent of T"
    assert "no analysis" in runs_tab.fit(catalogue, "emergence/missing").children.lower()


def test_attention_source_fills_the_controls_and_a_click_selects_a_head(catalogue, model_source):
    outputs = attention_tab.select_source(catalogue, model_source, None, ids.ATTENTION_SOURCE)
    assert len(outputs) == attention_tab.SOURCE_OUTPUTS
    note, examples, example, _, layer, heads, head, grid, problem = outputs
    assert "evaluation examples" in note and problem is None
    assert (example, layer, head) == (0, 1, 0) and len(examples) == 4 and len(heads) == 2
    assert grid.data[0].z.shape == (2, 2)
    click = {"points": [{"x": "head 1", "y": "layer 0"}]}
    chosen = attention_tab.select_source(catalogue, model_source, click, ids.ATTENTION_GRID)
    assert (chosen[4], chosen[6]) == (0, 1)
    bad = attention_tab.select_source(catalogue, model_source, {"points": []}, ids.ATTENTION_GRID)
    assert "clicked cell" in bad[-1].children


def show(catalogue: Catalogue, source: str, method: str, **settings: Any) -> tuple[Any, ...]:
    names = attention_tab.method_settings(method) if method != "none" else {}
    values = {**names, **settings}
    input_ids = [{"type": ids.HPARAM, "method": method, "name": name} for name in values]
    return attention_tab.show_pattern(
        catalogue, source, 0, 1, 0, method, input_ids, list(values.values()), 16, None, None,
        ids.ATTENTION_METHOD,
    )  # fmt: skip


def test_changing_the_method_recomputes_selection_density_recall_and_error(catalogue, model_source):
    figure, density, recall, _, problem, view = show(catalogue, model_source, "top_k", k=2)
    assert problem is None and view == {"shown": [model_source, 0, 1, 0], "window": None}
    subject = catalogue.subject(model_source)
    expected = head_selection(
        subject.cache[1], workbench.sparse.get("top_k", k=2), example=0, head=0, block_size=16
    )
    assert density == f"{expected.density:.3f}" and recall == f"{expected.recall:.3f}"
    assert [trace.name for trace in figure.data][:2] == ["weights", "kept by top_k(k=2)"]
    window = show(catalogue, model_source, "sink_window", sink=1, window=2)
    assert window[1] != density
    plain = show(catalogue, model_source, "none")
    assert plain[1:4] == ("–", "–", "–") and len(plain[0].data) == 2  # weights, relevant keys
    bad = show(catalogue, model_source, "top_k", k=0)
    assert "k must be" in bad[4].children and bad[1] == "–"
    with pytest.raises(PreventUpdate):  # the inputs still belong to the previous method
        attention_tab.show_pattern(
            catalogue, model_source, 0, 1, 0, "top_k",
            [{"type": ids.HPARAM, "method": "banded", "name": "k"}], [3], 16, None, None, None,
        )  # fmt: skip


def test_zooming_redraws_the_window_and_keeps_it_across_method_changes(catalogue, model_source):
    zoom = {
        "xaxis.range[0]": 1.6,
        "xaxis.range[1]": 6.4,
        "yaxis.range[0]": 9.5,
        "yaxis.range[1]": 4,
    }
    args = (catalogue, model_source, 0, 1, 0, "top_k", [], [], 16)
    input_ids = [{"type": ids.HPARAM, "method": "top_k", "name": "k"}]
    zoomed = attention_tab.show_pattern(
        *args[:6], input_ids, [3], 16, zoom, None, ids.ATTENTION_PATTERN
    )
    assert zoomed[5]["window"] == {"q0": 4, "q1": 10, "k0": 2, "k1": 7}
    assert zoomed[0].data[0].z.shape == (6, 5)
    kept = attention_tab.show_pattern(
        *args[:6], input_ids, [4], 16, zoom, zoomed[5], ids.HPARAM
    )  # a method change keeps the zoom
    assert kept[0].data[0].z.shape == (6, 5)
    reset = attention_tab.show_pattern(
        *args[:6], input_ids, [4], 16, {"xaxis.autorange": True}, zoomed[5], ids.ATTENTION_PATTERN
    )
    assert reset[5]["window"] is None and reset[0].data[0].z.shape == (16, 16)


def test_a_saved_trace_shows_its_pattern_but_runs_no_method(catalogue):
    source = next(value for value, _ in catalogue.sources() if value.startswith("trace:"))
    outputs = attention_tab.select_source(catalogue, source, None, ids.ATTENTION_SOURCE)
    assert outputs[-1] is None and "no model" in outputs[0]
    figure, *numbers, problem, _ = show(catalogue, source, "top_k", k=2)
    assert figure.data[0].z.shape == (16, 16) and numbers == ["–"] * 3
    assert "saved trace" in problem.children


def test_head_selection_agrees_with_layer_fidelity_on_one_head():
    import toy_tasks
    from workbench.capture import capture
    from workbench.models import toy_model

    task = toy_tasks.get("assoc_recall", n_pairs=4, seq_len=32, vocab_size=64)
    batch = task.sample(1, torch.Generator().manual_seed(0))
    model = toy_model(task)
    layer = capture(model, batch.inputs)[1]
    method = workbench.sparse.get("top_k", k=4)
    whole = layer_fidelity(layer, SparseCore(method, (2,), 16, record=False))
    one = head_selection(layer, method, example=0, head=2, block_size=16)
    assert one.density == pytest.approx(whole.density) and one.recall == pytest.approx(whole.recall)
    assert one.kept.shape == (32, 32) and one.kept.sum(-1).max() == 4
    assert not one.kept.triu(1).any()  # causal
    with pytest.raises(ValueError, match="head must be"):
        head_selection(layer, method, example=0, head=9)
    with pytest.raises(ValueError, match="example must be an integer"):
        head_selection(layer, method, example="0", head=0)
    with pytest.raises(ValueError, match="block_size"):
        head_selection(layer, method, example=0, head=0, block_size=17)
    with pytest.raises(ValueError, match="method must be a SparseMethod"):
        head_selection(layer, "top_k", example=0, head=0)


def test_methods_tab_compares_the_chosen_methods(catalogue, model_source):
    options, value, _ = methods_tab.layer_choices(catalogue, model_source)
    assert value == "all" and [option["value"] for option in options] == ["all", 0, 1]
    fidelity, layouts, shown, note = methods_tab.compare(
        catalogue, model_source, ["top_k", "banded"], "all", 16
    )
    assert len(shown.children[1].children) == 2  # one table row per method
    assert len(layouts.data) == 2 and fidelity.data[0].x is not None
    assert "evaluation examples" in note.children
    methods = [workbench.sparse.short_input(name) for name in ("top_k", "banded")]
    *_, rows = panels.methods_panel(catalogue.subject(model_source), methods, layers=[1])
    assert [row["method"].split("(")[0] for row in rows] == ["top_k", "banded"]
    assert all("k=5" in row["method"] for row in rows)  # labelled with their hyper-parameters
    assert all(0 < row["density"] <= 1 and 0 < row["recall"] <= 1 for row in rows)
    _, _, _, empty = methods_tab.compare(catalogue, model_source, [], "all", 16)
    assert "Choose" in empty.children


def test_sae_tab_says_when_no_run_has_an_sae(catalogue):
    panels_shown, note = sae_tab.summary(catalogue, None)
    assert panels_shown == [] and "workbench sae train" in note.children
    assert sae_tab.features(catalogue, None) == ([], [], None)


def dash_post(client: Any, app: Any, output: str, values: dict[str, Any], changed: str) -> dict:
    """POST one callback (the one writing ``output``) to Dash's endpoint, as the page does;
    ``values``: ``{"id.property": value}`` of its inputs and states (a list of
    ``(id, value)`` for a pattern-matching input)."""
    (key,) = [key for key in app.callback_map if key.strip(".").startswith(output)]
    spec = app.callback_map[key]

    def entries(kind: str) -> list[Any]:
        found = []
        for item in spec[kind]:
            name = item["id"]
            if name.startswith("{"):  # pattern-matching: one entry per matching component
                pattern = json.loads(name)["type"]
                found.append(
                    [
                        {"id": identity, "property": item["property"], "value": value}
                        for identity, value in values.get(f"{pattern}.{item['property']}", [])
                    ]
                )
            else:
                value = values.get(f"{name}.{item['property']}")
                found.append({"id": name, "property": item["property"], "value": value})
        return found

    outputs = [
        {"id": part.split(".")[0], "property": part.split(".")[1].split("@")[0]}
        for part in re.findall(r"[\w-]+\.[\w@]+", key)
    ]
    response = client.post(
        "/_dash-update-component",
        json={
            "output": key,
            "outputs": outputs,
            "inputs": entries("inputs"),
            "state": entries("state"),
            "changedPropIds": [changed],
        },
    )
    assert response.status_code == 200, response.data[:500]
    return response.get_json()["response"]


def test_callbacks_through_dashs_http_endpoint(dashboard_runs, model_source):
    app = create_app(dashboard_runs)
    client = app.server.test_client()
    page_html = client.get("/").get_data(as_text=True)
    assert page.TABS[0][1] and "_dash-config" in page_html
    assert not re.search(r"<script[^>]+src=\"https?://", page_html)  # served locally
    layout = client.get("/_dash-layout").get_json()
    assert ids.RUNS_TABLE in json.dumps(layout)
    shown = {}
    for method, settings in (("top_k", {"k": 2}), ("strided", {"stride": 4})):
        response = dash_post(
            client,
            app,
            ids.ATTENTION_PATTERN,
            {
                f"{ids.ATTENTION_SOURCE}.value": model_source,
                f"{ids.ATTENTION_EXAMPLE}.value": 0,
                f"{ids.ATTENTION_LAYER}.value": 1,
                f"{ids.ATTENTION_HEAD}.value": 0,
                f"{ids.ATTENTION_METHOD}.value": method,
                f"{ids.ATTENTION_BLOCK}.value": 16,
                f"{ids.HPARAM}.value": [
                    ({"type": ids.HPARAM, "method": method, "name": name}, value)
                    for name, value in settings.items()
                ],
                f"{ids.HPARAM}.id": [
                    (identity, identity)
                    for identity in (
                        {"type": ids.HPARAM, "method": method, "name": name} for name in settings
                    )
                ],
            },
            f"{ids.ATTENTION_METHOD}.value",
        )
        assert response[ids.ATTENTION_MESSAGE]["children"] is None, response[ids.ATTENTION_MESSAGE]
        shown[method] = response[ids.ATTENTION_DENSITY]["children"]
        assert response[ids.ATTENTION_PATTERN]["figure"]["data"][0]["type"] == "heatmap"
    assert shown["top_k"] != shown["strided"]
    response = dash_post(
        client, app, ids.ROOT_NOTE, {f"{ids.REFRESH}.n_clicks": 1}, f"{ids.REFRESH}.n_clicks"
    )
    assert len(response[ids.RUNS_INDEX]["data"]) == 4


class ScriptSources(HTMLParser):
    """The ``src`` of every ``<script>`` of a page, and how many scripts it has."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
            self.sources += [value or "" for name, value in attrs if name == "src"]


def test_report_of_a_run_is_one_offline_html_file(dashboard_runs, tmp_path):
    run = next(
        path for path in (dashboard_runs / "recall").iterdir() if (path / "results.json").exists()
    )
    out = tmp_path / "report.html"
    result = runner.invoke(cli, ["report", str(run), "-o", str(out), "--methods", "top_k,banded"])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    parser = ScriptSources()
    parser.feed(text)
    assert not [src for src in parser.sources if re.match(r"(https?:)?//", src)], parser.sources
    assert text.count("Plotly.newPlot") >= 8 and "plotly.js v" in text  # inlined once
    assert text.count("plotly.js v") == 1
    for heading in ("Training curves", "Attention", "Sparse methods on this model"):
        assert f"<h2>{heading}</h2>" in text
    assert 'class="problem"' not in text


def test_report_of_a_folder_lists_its_runs_and_fits(dashboard_runs, tmp_path):
    path = write_report(dashboard_runs, tmp_path / "all.html")
    text = path.read_text(encoding="utf-8")
    assert "<h2>Power-law fit: emergence/fit000000000</h2>" in text
    assert "broken000000" in text and "unreadable" in text
    with pytest.raises(FileNotFoundError, match="folder"):
        write_report(tmp_path / "missing", tmp_path / "x.html")
    with pytest.raises(ValueError, match="methods: unknown sparse method"):
        write_report(dashboard_runs, tmp_path / "x.html", methods=["nope"])
    with pytest.raises(ValueError, match="out must be a path"):
        write_report(dashboard_runs, None)
    with pytest.raises(ValueError, match="out must be a file"):
        write_report(dashboard_runs, tmp_path)


def test_dashboard_command_refuses_a_missing_folder(tmp_path):
    result = runner.invoke(cli, ["dashboard", str(tmp_path / "missing")], env={"COLUMNS": "200"})
    assert result.exit_code != 0 and "is not a folder" in result.output
    result = runner.invoke(cli, ["dashboard", str(tmp_path), "--host", ""], env={"COLUMNS": "200"})
    assert result.exit_code != 0 and "host must be" in result.output


def test_serve_names_its_bad_arguments(tmp_path):
    from workbench.dashboard.app import serve

    with pytest.raises(ValueError, match="host"):
        serve(tmp_path, host=5)
    with pytest.raises(ValueError, match="port"):
        serve(tmp_path, port=70000)


def test_window_from_axis_ranges():
    assert Window.from_ranges([1.6, 6.4], [9.5, 4.0], 16, 16) == Window(4, 10, 2, 7)
    assert Window.from_ranges([-3, 40], [-1, 99], 16, 12) == Window(0, 16, 0, 12)
    with pytest.raises(ValueError, match="x_range"):
        Window.from_ranges([float("nan"), 1], [0, 1], 4, 4)
    with pytest.raises(ValueError, match="q0 < q1"):
        Window(3, 3, 0, 1)
    with pytest.raises(ValueError, match="k1"):
        Window(0, 1, 0, 1.5)

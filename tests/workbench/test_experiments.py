import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from workbench.cli import app, parse_where
from workbench.experiments import (
    ExperimentSpec,
    RunRecord,
    RunsFailed,
    analyses,
    config_hash,
    icl_analysis,
    load_spec,
    run_experiment,
    spec_names,
)
from workbench.runs import Run

BASE = {
    "task": {"name": "single_location", "seq_len": 8, "d": 4, "burstiness": 1},
    "model": {"n_layers": 1, "d_model": 8},
    "sparse": None,
    "steps": 10,
}


def make_spec(name: str = "toy", **fields) -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {"name": name, "description": "a test experiment", "base": BASE, **fields}
    )


class StubTrain:
    """Records its calls; writes an eval loss falling from 1 to 0.02 whose 0.2 x initial crossing
    is at step 4 T / B (T = seq_len, B = burstiness), and accuracy / relevant mass rising with it."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, out_dir, *, resume, progress):
        self.calls.append({"config": config, "out_dir": out_dir, "resume": resume})
        task = config["task"]
        drop = 4.0 * task.get("seq_len", 8) / task.get("burstiness", 1)
        level = 0.8 / 0.98  # the sigmoid's value at the crossing
        centre = drop - 3 * np.log(level / (1 - level))
        with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as file:
            for step in range(0, 400, 2):
                rising = float(1 / (1 + np.exp(-(step - centre) / 3)))
                record = {"step": step, "loss": 1.0, "eval_loss": 1.0 - 0.98 * rising}
                record["eval_accuracy"] = rising
                record["attention"] = {"relevant_mass": [[rising / 2, rising], [0.1, 0.1]]}
                file.write(json.dumps(record) + "\n")
        return {"final_step": 400}


def test_config_hash_is_stable_and_order_independent():
    a = {"task": {"name": "x", "d": 4}, "lr": 0.001, "seed": 0}
    b = {"seed": 0, "lr": 0.001, "task": {"d": 4, "name": "x"}}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash({}) == "44136fa355b3"  # sha256("{}")[:12]: the canonical form is fixed


def test_sweep_expands_as_a_grid_times_seeds():
    spec = make_spec(sweep={"task.seq_len": [8, 16], "task.burstiness": [1, 2, 4]}, seeds=[0, 1])
    configs = spec.configs()
    assert len(configs) == 12
    assert len({config_hash(c) for c in configs}) == 12
    assert [(c["task"]["seq_len"], c["task"]["burstiness"], c["seed"]) for c in configs[:3]] == [
        (8, 1, 0),
        (8, 1, 1),
        (8, 2, 0),
    ]
    assert BASE["task"]["seq_len"] == 8  # the base is not mutated
    coupled = make_spec(sweep={"task.d,task.burstiness": [[4, 1], [8, 2]], "steps": [1, 2]})
    assert [(c["task"]["d"], c["task"]["burstiness"], c["steps"]) for c in coupled.configs()] == [
        (4, 1, 1),
        (4, 1, 2),
        (8, 2, 1),
        (8, 2, 2),
    ]


def test_quick_variant_merges_base_and_replaces_sweeps():
    spec = make_spec(
        sweep={"task.seq_len": [64, 128], "task.d": [8, 16]},
        seeds=[0, 1, 2],
        quick={
            "base": {"steps": 2, "task": {"d": 2}},
            "sweep": {"task.seq_len": [4]},
            "seeds": [0],
        },
    )
    quick = spec.quick_variant()
    assert quick.base["steps"] == 2 and quick.base["task"]["d"] == 2
    assert quick.base["task"]["name"] == "single_location"
    assert quick.sweep == {"task.seq_len": [4], "task.d": [8, 16]}
    assert len(quick.configs()) == 2
    assert quick.experiment_hash() != spec.experiment_hash()


def test_a_slice_is_a_subset_of_the_whole_specs_runs():
    spec = make_spec(
        sweep={"task.seq_len": [8, 16, 32], "task.d,task.burstiness": [[4, 1], [8, 1], [8, 2]]},
        seeds=[0, 1, 2],
    )
    whole = {config_hash(config): config for config in spec.configs()}
    part = spec.restricted({"task.seq_len": [32, 8], "task.d": [8], "seed": [2, 0]})
    configs = part.configs()
    assert len(configs) == 2 * 2 * 2  # two lengths, the two coupled tuples with d = 8, two seeds
    assert all(config_hash(config) in whole for config in configs)
    assert {(c["task"]["seq_len"], c["task"]["d"], c["task"]["burstiness"]) for c in configs} == {
        (8, 8, 1),
        (8, 8, 2),
        (32, 8, 1),
        (32, 8, 2),
    }
    assert {config["seed"] for config in configs} == {0, 2}
    assert part.sweep["task.seq_len"] == [8, 32]  # the spec's order, not the slice's
    assert spec.restricted({}).configs() == spec.configs()
    assert part.experiment_hash() != spec.experiment_hash()  # its analysis has its own folder


def test_a_slice_may_select_inside_the_mappings_a_sweep_varies():
    tasks = [
        {**BASE["task"], "seq_len": 8},
        {**BASE["task"], "seq_len": 16},
        {"name": "assoc_recall", "seq_len": 16},
    ]
    methods = [None, {"method": "top_k", "hparams": {"k": 5}}, {"method": "banded"}]
    spec = make_spec(sweep={"task,steps": [[task, 10] for task in tasks], "sparse": methods})
    part = spec.restricted({"task.name": ["single_location"], "sparse.method": ["top_k"]})
    assert [(c["task"]["seq_len"], c["sparse"]["hparams"]["k"]) for c in part.configs()] == [
        (8, 5),
        (16, 5),
    ]
    deeper = spec.restricted({"sparse.hparams.k": [5], "task.seq_len": [16]})
    assert [c["task"]["name"] for c in deeper.configs()] == ["single_location", "assoc_recall"]
    dense = spec.restricted({"sparse": [None]})  # the dense runs: None holds no method
    assert {c["sparse"] for c in dense.configs()} == {None}
    with pytest.raises(ValueError, match="none of \\['x'\\] is among its sweep values"):
        spec.restricted({"sparse.method": ["x"]})
    with pytest.raises(ValueError, match="no sweep value of 'steps' holds 'x'"):
        spec.restricted({"steps.x": [1]})
    with pytest.raises(ValueError, match=r"'model\.d_model' is not a sweep path"):
        spec.restricted({"model.d_model": [8]})


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        ({"task.name": ["x"]}, ValueError, "'task.name' is not a sweep path of 'toy'"),
        (
            {"task.seq_len": [7]},
            ValueError,
            "none of \\[7\\] is among its sweep values \\[8, 16\\]",
        ),
        ({"task.burstiness": [3]}, ValueError, "where\\['task.burstiness'\\]"),
        ({"seed": [5]}, ValueError, "none of \\[5\\] is a seed of the spec"),
        ({"task.seq_len": 8}, TypeError, "must be a list of values"),
        ({"task.seq_len": "8"}, TypeError, "must be a list of values"),
        ([("task.seq_len", [8])], ValueError, "where must be a mapping"),
    ],
)
def test_a_slice_names_what_it_cannot_select(where, error, message):
    spec = make_spec(sweep={"task.seq_len": [8, 16], "task.d,task.burstiness": [[4, 1]]})
    with pytest.raises(error, match=message):
        spec.restricted(where)


@settings(max_examples=50, deadline=None)
@given(path=st.text(min_size=1, max_size=20), values=st.lists(st.integers(), max_size=3))
def test_a_slice_of_anything_else_is_refused_by_name(path, values):
    spec = make_spec(sweep={"task.seq_len": [8, 16]}, seeds=[0])
    allowed = {"task.seq_len": {8, 16}, "seed": {0}}
    if path in allowed and set(values) & allowed[path]:
        assert spec.restricted({path: values}).configs()
    else:
        with pytest.raises(ValueError, match=re.escape(repr(path))):
            spec.restricted({path: values})


def test_cli_run_trains_a_slice_and_the_whole_spec_reuses_it(tmp_path, monkeypatch):
    spec = make_spec(sweep={"task.seq_len": [8, 16], "task.burstiness": [1, 2]}, seeds=[0, 1])
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    args = ["run", "toy", "--runs-dir", str(tmp_path)]
    part = CliRunner().invoke(app, [*args, "--where", "task.seq_len=16", "--where", "seed=[1]"])
    assert part.exit_code == 0, part.output
    assert "2 runs (2 trained, 0 reused)" in part.output
    whole = CliRunner().invoke(app, args)
    assert whole.exit_code == 0, whole.output
    assert "8 runs (6 trained, 2 reused)" in whole.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("task.seq_len", "takes PATH=VALUES"),
        ("=8", "takes PATH=VALUES"),
        ("task.seq_len=", "takes PATH=VALUES"),
        ("task.seq_len=[8", "are not YAML"),
        ("task.seq_len=99", "none of \\[99\\]"),
        ("lr=0.1", "'lr' is not a sweep path"),
    ],
)
def test_cli_run_where_errors_name_the_option(tmp_path, monkeypatch, option, message):
    spec = make_spec(sweep={"task.seq_len": [8, 16]})
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    result = CliRunner().invoke(
        app, ["run", "toy", "--runs-dir", str(tmp_path), "--where", option], terminal_width=200
    )
    assert result.exit_code == 2 and "--where" in result.output, result.output
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # the error box's lines
    assert re.search(message, text), result.output
    assert not (tmp_path / "toy").exists()  # nothing trained


def test_cli_where_reads_values_as_yaml():
    assert parse_where(["task.seq_len=64, 32", "sparse=[null, {method: top_k}]", "lr=0.001"]) == {
        "task.seq_len": [64, 32],
        "sparse": [None, {"method": "top_k"}],
        "lr": [0.001],
    }
    with pytest.raises(ValueError, match="names 'lr' twice"):
        parse_where(["lr=1", "lr=2"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sweeps": {}}, "unknown keys \\['sweeps'\\]"),
        ({"sweep": {"task.seqlen": [1]}}, "sweep: 'task.seqlen' is not a key of base"),
        ({"sweep": {"steps": []}}, "non-empty list"),
        ({"sweep": {"steps": 5}}, "non-empty list"),
        ({"sweep": {"steps,sparse": [[1, None], [3]]}}, "list of 2 values"),
        ({"sweep": {"steps,lrr": [[1, 2]]}}, "sweep: 'lrr' is not a key"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"seeds": [-1]}, "seeds"),
        ({"quick": {"steps": 1}}, "quick: unknown keys"),
        ({"quick": {"base": {"model": {"width": 3}}}}, "quick.base: 'model.width'"),
        ({"quick": {"sweep": {"lr": [1]}}}, "quick.sweep: 'lr'"),
    ],
)
def test_spec_validation_names_the_problem(fields, message):
    with pytest.raises(ValueError, match=message):
        make_spec(**fields)


def test_load_spec_errors_name_the_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\ndescription: x\nbase: {a: 1}\nextra: 2\n")
    (tmp_path / "other.yaml").write_text("name: renamed\ndescription: x\nbase: {a: 1}\n")
    (tmp_path / "bad_yaml.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: unknown keys \['extra'\]"):
        load_spec("broken", tmp_path)
    with pytest.raises(ValueError, match="must equal the file name"):
        load_spec("other", tmp_path)
    with pytest.raises(ValueError, match=r"bad_yaml\.yaml"):
        load_spec("bad_yaml", tmp_path)
    with pytest.raises(ValueError, match="unknown experiment 'missing'; known: bad_yaml, broken"):
        load_spec("missing", tmp_path)


QUICK_SIZES = {
    "emergence": (15, 400),
    "emergence_toy": (24, 600),  # a second or two per run
    "emergence_recall": (8, 1200),
    "icl_linreg": (1, 1500),
    "semantic_focus": (6, 1600),  # 8 epochs of 200 steps of 25 examples of length 40
    "trainable_sparse": (14, 500),
}
"""At most (runs, steps) of the quick variants (default 6 runs of 500 steps): together they finish
in minutes on 2 CPU cores."""


def test_bundled_specs_load_and_quick_variants_are_small():
    assert spec_names() == [
        "attention_saes",
        "emergence",
        "emergence_recall",
        "emergence_toy",
        "icl_linreg",
        "semantic_focus",
        "semantic_focus_recall",
        "trainable_sparse",
    ]
    for name in spec_names():
        spec = load_spec(name)
        quick = spec.quick_variant()
        runs, steps = QUICK_SIZES.get(name, (6, 500))
        assert len(quick.configs()) <= runs
        assert all(config["steps"] <= steps for config in quick.configs())


def test_runs_are_cached_by_config_hash(tmp_path):
    spec = make_spec(sweep={"task.seq_len": [8, 16]})
    train = StubTrain()
    first = run_experiment(spec, runs_dir=tmp_path, train_fn=train, progress=False)
    assert len(train.calls) == 2 and first.n_trained == 2
    for run in first.runs:
        assert run.directory == tmp_path / "toy" / config_hash(run.config)
        assert yaml.safe_load((run.directory / "config.yaml").read_text()) == run.config
        result = run.result()
        assert result["config_hash"] == run.config_hash and result["seconds"] >= 0
        assert result["train"] == {"final_step": 400}
    again = StubTrain()
    second = run_experiment(spec, runs_dir=tmp_path, train_fn=again, progress=False)
    assert again.calls == [] and second.n_trained == 0
    assert all(run.cached for run in second.runs)
    assert second.directory == tmp_path / "toy" / spec.experiment_hash()
    results = json.loads(second.results_path.read_text())
    assert results["experiment"] == "toy" and len(results["runs"]) == 2
    assert set(results["final_metrics"]) == {run.config_hash for run in second.runs}


def test_workers_train_in_processes_like_one_process(tmp_path):
    spec = make_spec(sweep={"task.seq_len": [8, 12, 16]}, seeds=[0])
    parallel = run_experiment(spec, runs_dir=tmp_path / "parallel", progress=False, workers=2)
    assert parallel.n_trained == 3
    serial = run_experiment(spec, runs_dir=tmp_path / "serial", progress=False)
    for a, b in zip(parallel.runs, serial.runs, strict=True):
        assert a.config_hash == b.config_hash
        last_a, last_b = a.metrics()[-1], b.metrics()[-1]
        assert last_a["step"] == last_b["step"] == 10
        assert last_a["eval_loss"] == pytest.approx(last_b["eval_loss"], rel=1e-4)
    again = run_experiment(spec, runs_dir=tmp_path / "parallel", progress=False, workers=2)
    assert again.n_trained == 0 and again.results["runs"] == parallel.results["runs"]
    with pytest.raises(ValueError, match="workers"):
        run_experiment(spec, runs_dir=tmp_path, progress=False, workers=0)


def stub_or_fail_at_length_12(config, out_dir, *, resume, progress):
    """A picklable `TrainFn` (module level, for worker processes): the stub, failing at T = 12."""
    if config["task"]["seq_len"] == 12:
        raise FloatingPointError("diverged")
    return StubTrain()(config, out_dir, resume=resume, progress=progress)


def test_a_failed_run_does_not_stop_the_other_workers(tmp_path):
    spec = make_spec(sweep={"task.seq_len": [8, 12, 16, 20]}, seeds=[0])
    with pytest.raises(RuntimeError, match=r"1 of 4 runs failed .*diverged") as raised:
        run_experiment(
            spec, runs_dir=tmp_path, train_fn=stub_or_fail_at_length_12, progress=False, workers=2
        )
    assert isinstance(raised.value.__cause__, FloatingPointError)
    finished = {
        config["task"]["seq_len"]
        for config in spec.configs()
        if (tmp_path / "toy" / config_hash(config) / "results.json").exists()
    }
    assert finished == {8, 16, 20}


def test_a_failed_run_does_not_stop_the_sweep_in_one_process(tmp_path):
    spec = make_spec(sweep={"task.seq_len": [8, 12, 16]}, seeds=[0])
    with pytest.raises(RunsFailed, match=r"1 of 3 runs failed .*diverged") as raised:
        run_experiment(spec, runs_dir=tmp_path, train_fn=stub_or_fail_at_length_12, progress=False)
    assert isinstance(raised.value.__cause__, FloatingPointError)
    assert [directory.name for directory, _ in raised.value.failures] == [
        config_hash(config) for config in spec.configs() if config["task"]["seq_len"] == 12
    ]
    finished = {
        config["task"]["seq_len"]
        for config in spec.configs()
        if (tmp_path / "toy" / config_hash(config) / "results.json").exists()
    }
    assert finished == {8, 16}


def test_interrupted_run_resumes(tmp_path):
    spec = make_spec()
    calls = []

    def interrupted(config, out_dir, *, resume, progress):
        calls.append(resume)
        (out_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, runs_dir=tmp_path, train_fn=interrupted, progress=False)
    run_dir = tmp_path / "toy" / config_hash(spec.configs()[0])
    assert (run_dir / "config.yaml").exists() and not (run_dir / "results.json").exists()
    train = StubTrain()
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=train, progress=False)
    assert calls == [True]
    assert [call["resume"] for call in train.calls] == [True]
    assert train.calls[0]["out_dir"] == run_dir and result.n_trained == 1


def test_no_train_analyses_finished_and_unfinished_runs_and_names_missing_ones(tmp_path):
    spec = make_spec(
        "emergence",
        sweep={"task.seq_len": [8, 16, 32, 64], "task.burstiness": [1, 2]},
        analysis={"paper": "toy_model"},
    )
    run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    configs = spec.configs()
    unfinished = tmp_path / "emergence" / config_hash(configs[-1])
    (unfinished / "results.json").unlink()
    records = [json.loads(line) for line in (unfinished / "metrics.jsonl").read_text().splitlines()]
    cut = [record for record in records if record["step"] <= 2]  # before it emerged
    (unfinished / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cut))
    missing = tmp_path / "emergence" / config_hash(configs[0])
    shutil.rmtree(missing)
    never = StubTrain()
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=never, progress=False, train=False)
    assert never.calls == [] and not missing.exists()
    assert result.results["missing"] == [missing.name]
    assert len(result.runs) == len(configs) - 1
    assert [run.finished for run in result.runs] == [True] * (len(configs) - 2) + [False]
    row = next(row for row in result.results["runs"] if row["config_hash"] == unfinished.name)
    assert row["emergence_time"] is None and not row["finished"]
    assert row["last_step"] == cut[-1]["step"]
    assert result.results["n_emerged"] == len(configs) - 2
    assert result.results["n_censored"] == result.results["fit"]["n_censored"] == 1
    assert result.results["fit"]["exponents"]["T"] == pytest.approx(1.0, abs=0.05)
    assert result.results["fit_emerged_only"]["n_points"] == len(configs) - 2
    fit_html = next(path for path in result.figures if path.name == "fit.html").read_text()
    assert "triangle-up-open" in fit_html  # the censored run, drawn as a lower bound
    figures = analyses.emergence_analysis(spec, result.runs).figures
    loss = {trace.name: trace for trace in figures["loss"].data}
    # Each run's threshold is 0.2 x its own initial loss: a dotted line per run.
    levels = [
        t for t in figures["loss"].data if t.name == "threshold: 0.2 x each run's initial loss"
    ]
    assert len(levels) == len(result.runs) and {t.line.dash for t in levels} == {"dot"}
    first = [
        json.loads(path.read_text().splitlines()[0])["eval_loss"]
        for path in [run.directory / "metrics.jsonl" for run in result.runs]
    ]
    assert [t.y[0] for t in levels] == pytest.approx([0.2 * value for value in first])
    emerged = [0.2 * value for run, value in zip(result.runs, first, strict=True) if run.finished]
    assert list(loss["emergence time"].y) == pytest.approx(emerged)
    assert list(loss["not emerged yet"].x) == [cut[-1]["step"]]
    assert loss["not emerged yet"].marker.symbol == "triangle-right-open"
    fit = {trace.name for trace in figures["fit"].data}
    assert {"fit, 95% interval", "paper (toy_model): slope T^0.99"} <= fit


def test_emergence_analysis_recovers_the_stub_scaling(tmp_path):
    spec = make_spec(
        "emergence",
        sweep={"task.seq_len": [8, 16, 32, 64], "task.burstiness": [1, 2]},
        analysis={"paper": "toy_model"},
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    fit = result.results["fit"]
    assert fit["names"] == ["T", "B"]
    assert fit["exponents"]["T"] == pytest.approx(1.0, abs=0.05)
    assert fit["exponents"]["B"] == pytest.approx(-1.0, abs=0.05)
    rows = {row["name"]: row for row in result.results["comparison"]}
    assert set(rows) == {"T", "B"} and rows["T"]["paper"] == 0.99
    names = sorted(path.name for path in result.figures)
    assert names == ["exponents_by_length.html", "fit.html", "loss.html", "relevant_mass.html"]
    headline = result.headline  # the fit beside the paper's, also stored in results.json
    assert headline.columns == ["quantity", "paper", "ours", "95% interval", "paper inside"]
    quantities = [row[0] for row in headline.rows]
    assert quantities[:3] == [f"toy_model: exponent of {name}" for name in ("T", "B", "d")]
    assert headline.rows[0][1] == "0.99" and headline.rows[2][2] == "-"  # d does not vary
    assert quantities[3] == "toy_model: exponent of T over T >= 32"  # the two longest lengths
    assert quantities[4].startswith("toy_model: emergence time / the paper's law")
    assert "8 of 8 runs at p = 0 emerged" in headline.note
    assert result.results["headline"] == headline.to_dict()
    assert all(path.stat().st_size > 1000 for path in result.figures)


def test_semantic_focus_analysis_groups_by_method(tmp_path):
    spec = make_spec(
        "semantic_focus_recall",
        sweep={"sparse": [None, {"method": "top_k", "hparams": {"k": 5}}]},
        seeds=[0, 1],
        analysis={"thresholds": [0.05, 0.5]},
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    methods = {row["method"]: row for row in result.results["methods"]}
    assert set(methods) == {"dense", "top_k(k=5)"}
    assert {row["task"] for row in result.results["methods"]} == {"single_location"}
    assert methods["dense"]["runs"] == 2 and methods["dense"]["reached_0.5"] == 2
    centre = 32 - 3 * np.log(0.8 / 0.18)  # where the stub's accuracy is 0.5
    assert methods["dense"]["median_steps_to_0.5"] == pytest.approx(centre, abs=0.5)
    assert methods["dense"]["mean_eval_accuracy"] == pytest.approx(1.0)
    assert {path.name for path in result.figures} == {"accuracy.html", "loss.html", "summary.html"}
    rows = {row[1]: row for row in result.headline.rows}  # task, method, steps..., accuracy
    assert set(rows) == {"dense", "top_k(k=5)"} and rows["dense"][-1] == "1.000"
    assert rows["dense"][3] == f"{centre:.0f}"  # median steps to 0.5, reached by both seeds


def test_semantic_focus_summarises_each_task_apart(tmp_path):
    spec = make_spec(
        "semantic_focus_recall",
        sweep={
            "task.seq_len": [8, 16],
            "sparse": [None, {"method": "top_k", "hparams": {"k": 5}}],
        },
        seeds=[0],
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    keys = [(row["task"], row["method"], row["runs"]) for row in result.results["methods"]]
    assert sorted(keys) == [
        ("single_location(seq_len=16)", "dense", 1),
        ("single_location(seq_len=16)", "top_k(k=5)", 1),
        ("single_location(seq_len=8)", "dense", 1),
        ("single_location(seq_len=8)", "top_k(k=5)", 1),
    ]
    # The stub's accuracy rises later for longer sequences: the tasks are not averaged together.
    steps = {
        (row["task"], row["method"]): row["median_steps_to_0.5"]
        for row in result.results["methods"]
    }
    assert (
        steps[("single_location(seq_len=16)", "dense")]
        > steps[("single_location(seq_len=8)", "dense")]
    )


def test_unknown_analysis_option_raises(tmp_path):
    spec = make_spec("emergence", analysis={"papr": "toy_model"})
    with pytest.raises(ValueError, match="unknown analysis options \\['papr'\\]"):
        run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)


class ZeroModel(torch.nn.Module):
    """Predicts 0 everywhere: its error curve is E[y^2] / d = 1 at every k."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs):
        return self.scale * inputs[..., :1]


def test_icl_error_curves_put_the_model_next_to_the_baselines(tmp_path):
    base = {**BASE, "task": {"name": "linear_regression", "d": 4, "n_points": 10}}
    runs = [RunRecord({**base, "seed": 0}, Run(tmp_path / "abc"), cached=False)]
    options = {
        "eval_examples": 512,
        "eval_seed": 0,
        "ridge_alpha": 0.1,
        "knn_k": 3,
        "gd_steps": [1, 10],
    }
    curves = analyses.icl_error_curves(runs, options, lambda run_dir: ZeroModel())["curves"]
    (task_curves,) = curves.values()
    assert set(task_curves) == {
        "least_squares",
        "ridge alpha=0.1",
        "gd steps=1",
        "gd steps=10",
        "3-NN",
        "averaging",
        "model seed=0",
    }
    # More steps of gradient descent fit the prompt better, least squares best of all.
    legend = {icl_analysis.curve_group(label) for label in task_curves}
    assert legend == set(task_curves) - {"model seed=0"} | {"model"}  # each baseline its own
    gd_1, gd_10 = task_curves["gd steps=1"], task_curves["gd steps=10"]
    assert gd_10[-1] < gd_1[-1] < task_curves["averaging"][-1] + 0.5
    assert all(len(curve) == 10 for curve in task_curves.values())
    assert np.mean(task_curves["model seed=0"]) == pytest.approx(1.0, abs=0.1)
    assert task_curves["least_squares"][-1] < 1e-6


def test_cli_run_list():
    result = CliRunner().invoke(app, ["run", "--list"])
    assert result.exit_code == 0, result.output
    for name in ("emergence", "icl_linreg", "semantic_focus", "semantic_focus_recall"):
        assert name in result.output
    quick_runs = len(load_spec("emergence").quick_variant().configs())
    assert f"({quick_runs} with --quick)" in result.output


def test_cli_run_unknown_experiment_names_the_known_ones():
    result = CliRunner().invoke(app, ["run", "nope"])
    assert result.exit_code != 0
    assert "emergence" in result.output


def test_cli_run_prints_where_results_are(tmp_path, monkeypatch):
    spec = make_spec()
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    result = CliRunner().invoke(app, ["run", "toy", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 runs (1 trained, 0 reused)" in result.output
    assert str(Path(tmp_path) / "toy" / spec.experiment_hash() / "results.json") in result.output


def test_cli_run_prints_the_headline_table(tmp_path, monkeypatch):
    """`workbench run` prints the analysis's headline (here the emergence fit beside the paper's)
    as a table, not only paths."""
    spec = make_spec("emergence", sweep={"task.seq_len": [8, 16, 32], "task.burstiness": [1, 2]})
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    result = CliRunner().invoke(
        app, ["run", "emergence", "--runs-dir", str(tmp_path)], terminal_width=160
    )
    assert result.exit_code == 0, result.output
    assert "95% interval" in result.output and "paper" in result.output
    assert "6 of 6 runs at p = 0 emerged" in result.output


def test_cli_run_takes_a_path_to_a_yaml_spec(tmp_path, monkeypatch):
    spec = make_spec()
    path = tmp_path / "specs" / f"{spec.name}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec.to_dict()))
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    runs_dir = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(path), "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert "1 runs (1 trained, 0 reused)" in result.output
    assert (runs_dir / spec.name / spec.experiment_hash() / "results.json").is_file()


def test_cli_run_no_train_counts_unfinished_and_missing_runs(tmp_path, monkeypatch):
    spec = make_spec(sweep={"task.seq_len": [8, 16]})
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    monkeypatch.setattr("workbench.experiments.runner.train_with_workbench", StubTrain())
    assert CliRunner().invoke(app, ["run", "toy", "--runs-dir", str(tmp_path)]).exit_code == 0
    configs = spec.configs()
    (tmp_path / "toy" / config_hash(configs[0]) / "results.json").unlink()
    shutil.rmtree(tmp_path / "toy" / config_hash(configs[1]))
    result = CliRunner().invoke(app, ["run", "toy", "--runs-dir", str(tmp_path), "--no-train"])
    assert result.exit_code == 0, result.output
    assert f"{len(configs) - 1} runs (1 unfinished, 1 missing)" in result.output
    assert not (tmp_path / "toy" / config_hash(configs[1])).exists()


def test_cli_run_reports_a_damaged_run_and_resumes_it_from_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    spec = make_spec(sweep={"task.seq_len": [8, 12]})
    monkeypatch.setattr("workbench.experiments.load_spec", lambda name: spec)
    command = ["run", "toy", "--runs-dir", str(tmp_path)]
    assert CliRunner().invoke(app, command).exit_code == 0  # checkpoints at steps 0 and 10
    damaged_run, other_run = (tmp_path / "toy" / config_hash(c) for c in spec.configs())
    for run_dir in (damaged_run, other_run):  # unfinished again
        (run_dir / "results.json").unlink()
    tensors = damaged_run / "checkpoints" / "step-10" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x01  # a flipped bit in the tensor data
    tensors.write_bytes(bytes(data))
    failed = CliRunner().invoke(app, command)
    assert failed.exit_code == 1
    assert f"run {damaged_run} failed: CheckpointError: {tensors}" in failed.output
    assert "--resume previous" in failed.output and "1 of 2 runs failed" in failed.output
    assert not (damaged_run / "results.json").exists()
    assert (other_run / "results.json").exists()  # the sweep went on
    resumed = CliRunner().invoke(app, [*command, "--resume", "previous"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((damaged_run / "results.json").read_text())["train"]["resumed_from"] == 0
    (aside,) = damaged_run.glob("replaced-*")
    assert (aside / "checkpoints" / "step-10" / "tensors.safetensors").read_bytes() == data
    wrong = CliRunner().invoke(app, [*command, "--resume", "latest"])
    assert wrong.exit_code != 0 and "--resume" in wrong.output


class ChanceStubTrain(StubTrain):
    """StubTrain whose accuracy starts at chance level 0.1 (a 10-way guess) instead of 0."""

    def __call__(self, config, out_dir, *, resume, progress):
        summary = super().__call__(config, out_dir, resume=resume, progress=progress)
        path = out_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for record in records:
            record["eval_accuracy"] = 0.1 + 0.9 * record["eval_accuracy"]
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return summary


def test_semantic_focus_reports_a_threshold_below_chance_as_at_chance(tmp_path):
    spec = make_spec(
        "semantic_focus_recall",
        sweep={"sparse": [None, {"method": "top_k", "hparams": {"k": 5}}]},
        seeds=[0, 1],
        analysis={"thresholds": [0.05, 0.5]},
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=ChanceStubTrain(), progress=False)
    for row in result.results["runs"]:
        assert row["steps_to_0.05"] is None and row["at_chance_0.05"] is True
        assert row["steps_to_0.5"] > 0 and row["at_chance_0.5"] is False
    dense = next(row for row in result.results["methods"] if row["method"] == "dense")
    assert dense["at_chance_0.05"] == 2 and dense["reached_0.05"] == 0
    assert dense["median_steps_to_0.05"] is None
    figures = analyses.recall_study_analysis(spec, result.runs).figures
    table = figures["summary"].data[0]
    headers = [text.replace("<br>", " ") for text in table.header["values"]]
    column = headers.index("steps to 5% accuracy (median)")
    assert set(table.cells["values"][column]) == {"at chance"}
    assert "at chance" not in set(table.cells["values"][column + 1])
    names = {trace.name for trace in figures["accuracy"].data}
    assert {"5% accuracy: at chance", "50% accuracy", "threshold reached"} <= names


def test_semantic_focus_figures_give_a_method_one_colour(tmp_path):
    from workbench.viz.style import method_colour

    spec = make_spec(
        "semantic_focus_recall",
        sweep={
            "task": [
                {"name": "assoc_recall", "vocab_size": 16, "seq_len": 16, "n_pairs": 2},
                {"name": "joint_recall"},
            ],
            "sparse": [None, {"method": "top_k", "hparams": {"k": 5}}],
        },
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    figures = analyses.recall_study_analysis(spec, result.runs).figures
    for name in ("accuracy", "loss"):
        lines = [trace for trace in figures[name].data if trace.name == "top_k(k=5)"]
        assert {trace.line.color for trace in lines} == {method_colour("top_k")}
        assert {trace.xaxis for trace in lines} == {"x", "x2"}  # one panel per task
        assert [trace.showlegend for trace in lines] == [True, False]
    annotations = [annotation.text for annotation in figures["accuracy"].layout.annotations]
    assert annotations == ["assoc_recall", "joint_recall"]


def test_emergence_loss_figure_marks_one_shared_threshold(tmp_path):
    spec = make_spec(
        "emergence",
        sweep={"task.seq_len": [8, 16, 32], "task.burstiness": [1, 2]},
        analysis={"paper": "toy_model", "initial_loss": 1.0},
    )
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=StubTrain(), progress=False)
    figures = analyses.emergence_analysis(spec, result.runs).figures
    loss = {trace.name: trace for trace in figures["loss"].data}
    assert list(loss["threshold 0.2 x 1 = 0.2"].y) == [0.2, 0.2]
    times = {row["config_hash"]: row["emergence_time"] for row in result.results["runs"]}
    assert sorted(loss["emergence time"].x) == pytest.approx(sorted(times.values()))
    # The loss, relevant-mass and fit figures draw a run in one colour.
    styles = analyses.emergence_styles(result.results["runs"])
    run = result.results["runs"][0]
    label = f"T={run['T']} d={run['d']} B={run['B']}"
    assert {t.line.color for t in figures["loss"].data if t.name == label} == {
        styles[run["config_hash"]].colour
    }
    mass = [t for t in figures["relevant_mass"].data if t.name == f"{label} layer 1"]
    assert {t.line.color for t in mass} == {styles[run["config_hash"]].colour}
    assert {t.line.dash for t in mass} == {"dash"}
    points = [t for t in figures["fit"].data if t.name == f"B={run['B']}"]
    assert styles[run["config_hash"]].colour in points[0].marker.color

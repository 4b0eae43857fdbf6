"""The paper-versus-ours analyses of the emergence experiments (transformer, toy model, recall)
and of in-context regression, on runs whose logs are written by stubs with known laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workbench.experiments import ExperimentSpec, load_spec, run_experiment
from workbench.experiments.emergence_analysis import exponents_by_length_figure
from workbench.experiments.reproduction import (
    exponent_rows,
    geometric_mean_interval,
    ratio_row,
    reproduction_headline,
    value_row,
)


def sigmoid_log(out_dir, drop: float, key: str, *, rising: bool, steps: int = 600) -> None:
    """A metric crossing its emergence level at ``drop``: a loss from 0.5 to 0.01 (0.1 at
    ``drop``) or an accuracy from 0.01 to 1 (0.05 at ``drop``)."""
    with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as file:
        for step in range(0, steps, 2):
            x = 0.5 * (1 + math.tanh((step - drop) / 4))  # the logistic (step - drop) / 2
            value = 0.01 + 0.99 * x if rising else 0.5 - 0.8 * x
            value = max(value, 0.01)
            file.write(json.dumps({"step": step, "loss": 1.0, key: value}) + "\n")


def single_location_stub(config, out_dir, *, resume, progress):
    """Emergence at ``T sqrt(d) / B / (1 + 2p)`` (loss 0.1 = 0.2 x 0.5 at that step)."""
    task = config["task"]
    p = task.get("cross_sample_p", 0.0)
    drop = task["seq_len"] * math.sqrt(task["d"]) / task["burstiness"] / (1 + 2 * p)
    sigmoid_log(out_dir, drop + config["seed"], "eval_loss", rising=False)


def spec(name: str, base: dict, sweep: dict, **fields) -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {"name": name, "description": "a test", "base": base, "sweep": sweep, **fields}
    )


SINGLE = {
    "task": {
        "name": "single_location",
        "seq_len": 8,
        "d": 4,
        "burstiness": 1,
        "cross_sample_p": 0.0,
    },
    "model": {"n_layers": 1, "d_model": 8},
    "steps": 10,
}


def test_emergence_analysis_fits_at_p_zero_and_measures_cross_sample_speedups(tmp_path) -> None:
    experiment = spec(
        "emergence",
        SINGLE,
        {
            "task.seq_len": [16, 32, 64],
            "task.d": [4, 16],
            "task.burstiness,task.cross_sample_p": [[1, 0.0], [2, 0.0], [1, 0.5]],
        },
        seeds=[0, 1],
        analysis={"initial_loss": 0.5},
    )
    result = run_experiment(
        experiment, runs_dir=tmp_path, train_fn=single_location_stub, progress=False
    )
    results = result.results
    assert results["n_fitted"] == 24 and results["n_runs"] == 36
    exponents = results["fit"]["exponents"]
    assert exponents["T"] == pytest.approx(1.0, abs=0.05)
    assert exponents["d"] == pytest.approx(0.5, abs=0.05)
    assert exponents["B"] == pytest.approx(-1.0, abs=0.1)
    (cross,) = results["cross_sample"]
    assert cross["p"] == 0.5 and len(cross["ratios"]) == 12
    assert np.mean(cross["ratios"]) == pytest.approx(2.0, rel=0.05)
    rows = {row["quantity"]: row for row in results["paper_vs_ours"]}
    assert rows["transformer: exponent of T"]["paper"] == 0.8
    assert rows["transformer: exponent of T"]["reproduces"] is False  # T^1 here
    speedup = rows["transformer: speed-up of cross-sample repetition p=0.5"]
    assert speedup["ours"] == pytest.approx(2.0, rel=0.05) and speedup["paper"] is None
    assert "toy-model theory" in speedup["note"]
    assert any(q.startswith("transformer: emergence time / the paper's law") for q in rows)
    (middle,) = results["fits_from_length"]  # T >= 32: the lengths but the shortest and longest
    assert middle["min_T"] == 32 and middle["n_fitted"] == 16
    assert middle["fit"]["exponents"]["T"] == pytest.approx(1.0, abs=0.05)
    tail = rows["transformer: exponent of T over T >= 32"]
    assert tail["ours"] == middle["fit"]["exponents"]["T"] and tail["paper"] == 0.8
    assert results["headline"]["columns"] == [
        "quantity",
        "paper",
        "ours",
        "95% interval",
        "paper inside",
    ]


def floored_stub(config, out_dir, *, resume, progress):
    """Emergence at ``200 + 4 T``: a floor of 200 steps under a linear law in T."""
    sigmoid_log(out_dir, 200 + 4 * config["task"]["seq_len"], "eval_loss", rising=False, steps=4000)


def test_a_floor_under_the_short_sequences_shows_in_the_fits_from_longer_lengths(tmp_path):
    experiment = spec(
        "emergence",
        SINGLE,
        {"task.seq_len": [8, 32, 128, 512]},
        seeds=[0, 1],
        analysis={"initial_loss": 0.5},
    )
    result = run_experiment(experiment, runs_dir=tmp_path, train_fn=floored_stub, progress=False)
    results = result.results
    exponents = [results["fit"]["exponents"]["T"]]
    exponents += [entry["fit"]["exponents"]["T"] for entry in results["fits_from_length"]]
    assert [entry["min_T"] for entry in results["fits_from_length"]] == [32, 128]
    assert exponents == sorted(exponents)  # steeper as the floor's share shrinks
    assert exponents[0] < 0.6 and exponents[-1] > 0.8  # toward the law's 1 without the floor
    assert "exponents_by_length.html" in {path.name for path in result.figures}
    figure = exponents_by_length_figure(results["runs"], results, "transformer")
    (line,) = figure.data  # T alone varies: one exponent, at the shortest length of each fit
    assert list(line.x) == [8, 32, 128] and list(line.y) == pytest.approx(exponents)
    low, high = results["fit"]["intervals"]["T"]
    assert line.error_y.arrayminus[0] == pytest.approx(exponents[0] - low)
    assert line.error_y.array[0] == pytest.approx(high - exponents[0])
    assert [shape.y0 for shape in figure.layout.shapes] == [0.8]  # the paper's exponent of T


def toy_stub(config, out_dir, *, resume, progress):
    """Emergence at 1.5 sqrt(d) T / B (shared) or / sqrt(B) (free), cross-sample as its theory."""
    task, repeat = config["task"], config["model"]["repeat_logits"]
    p, d, T, B = task["cross_sample_p"], task["d"], task["seq_len"], task["burstiness"]
    drop = 1.5 * math.sqrt(d) * T / (B if repeat == "shared" else math.sqrt(B))
    drop /= math.sqrt(p * p * d + (1 - p) ** 2)
    sigmoid_log(out_dir, drop + config["seed"], "eval_loss", rising=False, steps=800)


def test_toy_analysis_fits_free_and_shared_logits_and_draws_gradient_flow(tmp_path) -> None:
    base = {
        "task": {
            "name": "single_location",
            "seq_len": 8,
            "d": 4,
            "burstiness": 1,
            "cross_sample_p": 0.0,
            "position": "last",
        },
        "model": {"architecture": "emergence_toy", "repeat_logits": "free"},
        "optimizer": "sgd",
        "lr": 1.0,
        "steps": 800,
        "eval_every": 2,
        "device": "cpu",
    }
    experiment = spec(
        "emergence_toy",
        base,
        {
            "task.seq_len": [8, 16, 32],
            "task.d": [4, 16],
            "task.burstiness,task.cross_sample_p,model.repeat_logits": [
                [1, 0.0, "free"],
                [4, 0.0, "free"],
                [4, 0.0, "shared"],
                [1, 0.3, "free"],
            ],
        },
        analysis={"paper": "toy_model", "initial_loss": 0.5},
    )
    result = run_experiment(experiment, runs_dir=tmp_path, train_fn=toy_stub, progress=False)
    fits = result.results["fits"]
    assert fits["free"]["fit"]["exponents"]["B"] == pytest.approx(-0.5, abs=0.05)
    assert fits["shared"]["fit"]["exponents"]["B"] == pytest.approx(-1.0, abs=0.05)
    cross = result.results["cross_sample_fit"]["fit"]["exponents"]["X"]
    assert cross == pytest.approx(1.0, abs=0.05)
    for row in result.results["runs"]:  # gradient flow of the expected loss, per run
        assert row["theory_time"] and row["theory_time"] > row["estimate"] * 0.8
    rows = {row["quantity"]: row for row in result.results["paper_vs_ours"]}
    assert rows["toy model (shared repeat logits): exponent of B"]["reproduces"] is False
    assert rows["toy model (shared repeat logits): prefactor"]["paper"] == 1.51
    assert "toy model: SGD emergence time / gradient flow's" in rows
    assert {path.name for path in result.figures} >= {"loss.html", "fit_free.html", "theory.html"}


def recall_stub(config, out_dir, *, resume, progress):
    """Steps to 5% accuracy: 0.5 N_tokens^0.8 N_pairs^2 / B / (1 + 2p), 10 more for seed 1."""
    task = config["task"]
    drop = 0.5 * task["n_tokens"] ** 0.8 * task["n_pairs"] ** 2
    drop /= task["burstiness"] * (1 + 2 * task["cross_sample_p"])
    # accuracy 0.01 + 0.99 x = 0.05 where the logistic x = 0.04 / 0.99, 2 log(0.95 / 0.04)
    # steps before its centre
    centre = drop + 10 * config["seed"] + 2 * math.log(0.95 / 0.04)
    sigmoid_log(out_dir, centre, "eval_accuracy", rising=True, steps=2000)


def test_recall_analysis_fits_the_steps_to_five_percent(tmp_path) -> None:
    base = {
        "task": {
            "name": "in_context_recall",
            "n_tokens": 32,
            "n_pairs": 4,
            "burstiness": 1,
            "cross_sample_p": 0.0,
        },
        "model": {"n_layers": 1, "d_model": 8},
        "steps": 10,
    }
    experiment = spec(
        "emergence_recall",
        base,
        {
            "task.n_pairs,task.n_tokens,task.burstiness,task.cross_sample_p": [
                [n, t, 1, 0.0] for n in (4, 6, 8) for t in (32, 64, 128)
            ]
            + [[8, 128, 2, 0.0], [8, 128, 1, 0.5]],
        },
        seeds=[0, 1],
    )
    result = run_experiment(experiment, runs_dir=tmp_path, train_fn=recall_stub, progress=False)
    exponents = result.results["fit"]["exponents"]
    assert exponents["N_pairs"] == pytest.approx(2.0, abs=0.1)
    assert exponents["N_tokens"] == pytest.approx(0.8, abs=0.1)
    rows = {row["quantity"]: row for row in result.results["paper_vs_ours"]}
    assert rows["recall, steps to 5%: exponent of N_pairs"]["paper"] == 2.25
    in_context = rows["recall: speed-up of in-context repetition B=2"]
    cross = rows["recall: speed-up of cross-sample repetition p=0.5"]
    assert in_context["paper"] == 4.0 and cross["paper"] == 2.0
    assert in_context["ours"] == pytest.approx(2.0, rel=0.1)
    assert cross["ours"] == pytest.approx(2.0, rel=0.1) and cross["reproduces"]


def test_reproduction_rows_and_headline() -> None:
    row = value_row("x", 1.0, 1.2, 0.9, 1.5)
    assert row["reproduces"] is True and value_row("x", 2.0, 1.2, 0.9, 1.5)["reproduces"] is False
    assert value_row("x", None, 1.2, 0.9, 1.5)["reproduces"] is None
    centre, low, high = geometric_mean_interval([2.0, 2.0, 2.0])
    assert centre == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    assert ratio_row("r", 1.0, [])["ours"] is None
    assert exponent_rows(None, {"T": 1.0}, "law")[0]["note"] == "not fitted"
    headline = reproduction_headline("t", [row, value_row("y", None, None)], "note")
    assert headline.rows[0] == ["x", "1", "1.2", "[0.9, 1.5]", "yes"]
    assert headline.rows[1] == ["y", "-", "-", "-", "-"] and headline.note == "note"


def test_the_full_specs_hold_the_papers_grids() -> None:
    """The full sweeps (the GPU's job) have the papers' grids: emergence over three d values,
    repetition in context and across samples, 5 seeds, at most 50k steps; Garg's model and
    curriculum for in-context regression."""
    emergence = load_spec("emergence")
    configs = emergence.configs()
    assert len({c["task"]["d"] for c in configs}) >= 3
    assert len({c["task"]["seq_len"] for c in configs}) >= 4
    assert {c["task"]["burstiness"] for c in configs} >= {1, 4}
    assert {c["task"]["cross_sample_p"] for c in configs} >= {0.0, 0.5}
    assert len(emergence.seeds) == 5 and max(c["steps"] for c in configs) == 50000
    base = emergence.base
    assert (base["model"]["n_layers"], base["model"]["d_model"], base["lr"]) == (2, 256, 1e-4)
    icl = load_spec("icl_linreg").base
    model = icl["model"]
    assert (model["n_layers"], model["n_heads"], model["d_model"]) == (12, 8, 256)
    assert (icl["task"]["d"], icl["task"]["n_points"]) == (20, 41)
    assert icl["curriculum"]["dims"] == {"start": 5, "end": 20, "increment": 1, "interval": 2000}
    recall = load_spec("emergence_recall")
    points = {(c["task"]["n_pairs"], c["task"]["n_tokens"]) for c in recall.configs()}
    assert (32, 256) in points and len(recall.seeds) == 5


def test_copy_results_keeps_the_analysis_and_the_runs_logs(tmp_path) -> None:
    from workbench.devtools.results import copy_results

    experiment = spec("emergence", SINGLE, {"task.seq_len": [8, 16, 32]}, seeds=[0])
    result = run_experiment(
        experiment, runs_dir=tmp_path / "runs", train_fn=single_location_stub, progress=False
    )
    target = copy_results(result.directory, tmp_path / "results" / "emergence_cpu")
    assert (target / "experiment.yaml").exists() and (target / "results.json").exists()
    copied = {path.name for path in (target / "runs").iterdir()}
    assert copied == {run.config_hash for run in result.runs}
    for run in result.runs:
        assert (target / "runs" / run.config_hash / "metrics.jsonl").exists()
    html = (target / "figures" / "fit.html").read_text(encoding="utf-8")
    assert 'src="../../plotly.min.js"' in html and (tmp_path / "results/plotly.min.js").exists()
    assert not (target / "figures" / "plotly.min.js").exists()
    with pytest.raises(ValueError, match="analysis_dir"):
        copy_results(tmp_path / "runs", tmp_path / "results" / "nothing")

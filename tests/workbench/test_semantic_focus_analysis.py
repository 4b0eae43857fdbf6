"""The ``semantic_focus`` experiment: its spec says what the paper's code does, and its analysis
(epochs to 95% held-out accuracy, median / IQR curves, bootstrap comparison, the stability
conditions) computes what it says on stub runs with known answers."""

import json
import math

import pytest

from workbench.experiments import load_spec, run_experiment
from workbench.experiments import semantic_focus_analysis as sfa
from workbench.experiments.spec import ExperimentSpec
from workbench.train import TrainConfig
from workbench.train.optim import learning_rate

SPARTAN_EPOCHS = {  # rithram/spartan's nnch-*.sh and lra-lops.sh
    "parity": 1000,
    "even_pairs": 100,
    "missing_duplicate": 250,
    "stack_manipulation": 200,
    "cycle_navigation": 750,
    "modular_arithmetic_brackets": 600,
    "solve_equation": 600,
    "listops": 200,
}


def test_spec_is_the_papers_setup():
    spec = load_spec("semantic_focus")
    configs = spec.grid()
    assert len(configs) == 8 * 20 and len(spec.seeds) == 10
    by_task = {}
    for config in configs:
        by_task.setdefault(config["task"]["name"], config)
        assert config["steps"] == 200 * SPARTAN_EPOCHS[config["task"]["name"]]
    assert set(by_task) == set(SPARTAN_EPOCHS)
    chomsky, listops = by_task["parity"], by_task["listops"]
    assert (chomsky["model"]["n_layers"], chomsky["lr"], chomsky["gamma"]) == (5, 0.1, 0.9995)
    assert (listops["model"]["n_layers"], listops["lr"], listops["gamma"]) == (10, 1.0, 0.99)
    config = TrainConfig.from_dict({**chomsky, "seed": 0})
    model = config.model
    assert (model.n_heads, model.d_model, model.d_mlp, model.attention) == (
        1,
        64,
        64,
        "bidirectional",
    )
    assert (model.normalization, model.positional, model.dropout) == ("LNPre", "sinusoidal", 0.01)
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.0, 0.0)
    assert (config.grad_clip, config.batch_size, config.train_samples) == (0.5, 25, 5000)
    assert config.eval_batch_size == 2000 and config.resolved_task().seq_len == 40
    # StepLR(gamma) stepped once per epoch of 200 steps, as spartan's ch.py does.
    assert sfa.steps_per_epoch(chomsky) == 200
    assert learning_rate(config, 199) == 0.1
    assert learning_rate(config, 200) == pytest.approx(0.1 * 0.9995)
    assert learning_rate(config, 200 * 7 + 5) == pytest.approx(0.1 * 0.9995**7)
    variants = {sfa.variant_label(c) for c in configs}
    assert {"full", "top_k(k=5)", "top_k(k=9)", "banded(k=5)+G1", "block_local(k=9)+G3"} <= variants
    assert {"random_per_call(k=5)", "random(k=9)", "top_p(p=0.85)"} <= variants
    for config in configs:  # a variant with global tokens appends as many to its task
        hparams = (config["sparse"] or {}).get("hparams", {})
        assert config["task"]["global_tokens"] == hparams.get("global_tokens", 0)


def test_quick_variant_is_small():
    quick = load_spec("semantic_focus").quick_variant()
    assert len(quick.configs()) <= 6
    assert sum(config["steps"] for config in quick.configs()) <= 12000
    assert {sfa.variant_label(c) for c in quick.configs()} == {"full", "top_k(k=5)"}


def test_variant_labels():
    banded = {"method": "banded", "hparams": {"k": 5, "global_tokens": 3, "global_at": "end"}}
    assert sfa.variant_label({"sparse": None}) == "full"
    assert sfa.variant_label({"sparse": banded}) == "banded(k=5)+G3"
    layered = {"method": "top_k", "hparams": {"k": 5}, "layers": [1]}
    assert sfa.variant_label({"sparse": layered}) == "top_k(k=5) layers 1"
    assert sfa.variant_style("banded(k=9)+G1").dash == "dashdot"


CONVERGE = {"full": 6, "top_k": 3}
"""Epoch at which the stub's held-out accuracy reaches 0.95 (plus the seed for full)."""


def stub_train(config, out_dir, *, resume, progress):
    """Held-out accuracy 0.5 until the run's epoch, then 0.96; the training loss halves each
    epoch; focus percentiles of a fixed shape."""
    method = (config["sparse"] or {}).get("method", "full")
    converge = CONVERGE[method] + (config["seed"] if method == "full" else 0)
    epochs = config["steps"] // 200
    with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as file:
        for epoch in range(epochs + 1):
            record = {"step": 200 * epoch, "loss": 1.0}
            record["eval_accuracy"] = 0.96 if epoch >= converge else 0.5
            record["eval_loss_train"] = 0.7 * 0.5**epoch
            scale = 2.0 if method == "full" else 1.0
            record["focus_quantiles"] = {
                "delta_full": {f"q{q}": 4 * q / 100 for q in (0, 5, 10, 25, 50, 75, 90, 95, 100)},
                "delta_sparse": {f"q{q}": scale * q / 100 for q in (0, 5, 10, 25, 50, 75, 90, 95, 100)},
                "separation": {f"q{q}": 0.1 + q / 100 for q in (0, 5, 10, 25, 50, 75, 90, 95, 100)},
                "beta": {f"q{q}": 10 * q / 100 for q in (0, 5, 10, 25, 50, 75, 90, 95, 100)},
            }  # fmt: skip
            file.write(json.dumps(record) + "\n")
    return {}


def stub_spec(epochs=10, seeds=(0, 1, 2)):
    base = {
        "task": {"name": "even_pairs", "length": 12, "global_tokens": 0},
        "model": {"n_layers": 1, "d_model": 8},
        "sparse": None,
        "steps": 200 * epochs,
        "batch_size": 25,
        "train_samples": 5000,
    }
    return ExperimentSpec.from_dict(
        {
            "name": "semantic_focus",
            "description": "stub",
            "base": base,
            "sweep": {"sparse": [None, {"method": "top_k", "hparams": {"k": 5}}]},
            "seeds": list(seeds),
            "analysis": {"bootstrap": 500},
        }
    )


def test_analysis_on_stub_runs(tmp_path):
    result = run_experiment(stub_spec(), runs_dir=tmp_path, train_fn=stub_train, progress=False)
    variants = {row["variant"]: row for row in result.results["variants"]}
    assert variants["full"]["epochs_to_accuracy"]["median"] == 7.0  # epochs 6, 7, 8
    assert variants["full"]["epochs_to_accuracy"]["q25"] == 6.5
    assert variants["top_k(k=5)"]["epochs_to_accuracy"]["median"] == 3.0
    assert variants["top_k(k=5)"]["reached"] == 3
    assert variants["full"]["final_accuracy"]["median"] == pytest.approx(0.96)
    (comparison,) = result.results["comparisons"]
    assert comparison["speedup"] == pytest.approx(7 / 3)
    low, high = comparison["speedup_interval"]
    assert 2.0 - 1e-9 <= low <= 7 / 3 <= high <= 8 / 3 + 1e-9
    assert comparison["speedup_bound"] is None
    assert comparison["accuracy_gain"] == pytest.approx(0.0, abs=1e-6)
    names = sorted(path.name for path in result.figures)
    assert names == ["comparison.html", "curves.html", "stability.html", "summary.html"]
    rows = {row[1]: row for row in result.headline.rows}
    assert rows["full"][2] == "7.0 [6.5, 7.5] (3/3 reached within 10 epochs)"
    assert rows["top_k(k=5)"][4].startswith("2.33")
    # The stability rows: the paper's even-pairs numbers and ours (full runs' delta_full).
    stability = {(row["source"], row["variant"]): row for row in result.results["stability"]}
    paper = stability[("paper", "top_k(k=5)")]
    ours = stability[("ours", "top_k(k=5)")]
    assert ours["delta_full"] == [3.0, 3.6, 3.8, 4.0]
    assert ours["separation"] == pytest.approx([0.35, 0.2, 0.15, 0.1])
    assert ours["c1"] == pytest.approx([0.25] * 4)
    for row in (paper, ours):
        for i, level in enumerate(row["levels"]):
            d, c1, c2 = row["delta_full"][i], row["c1"][i], row["c2"][i]
            w = c1 + math.log(2 * (1 + 1 / (d * c2))) / d
            beta = row["beta"][i] / 5
            x = c1 + math.log(d * (1 + beta) * (1 + 1 / (d * c2)) + beta) / d - math.log(d + 1) / d
            assert row["w"][i] == pytest.approx(w) and row["x"][i] == pytest.approx(x), level
            assert row["w_holds"][i] == (w < 1)


def test_a_variant_that_never_converges_is_a_bound(tmp_path):
    spec = stub_spec(epochs=4, seeds=(0, 1))  # full would converge at epoch 6, 7: never here
    result = run_experiment(spec, runs_dir=tmp_path, train_fn=stub_train, progress=False)
    variants = {row["variant"]: row for row in result.results["variants"]}
    assert variants["full"]["reached"] == 0
    assert variants["full"]["epochs_to_accuracy"]["median"] is None  # not reached
    (comparison,) = result.results["comparisons"]
    assert comparison["speedup_bound"] == "lower"
    assert comparison["speedup"] == pytest.approx(5 / 3)  # censored at one epoch past the last
    rows = {row[1]: row for row in result.headline.rows}
    assert rows["full"][2] == "not reached (0/2 reached within 4 epochs)"
    assert rows["top_k(k=5)"][4].startswith(">= 1.67")
    json.dumps(result.results, allow_nan=False)  # strict JSON: no Infinity
    # Drawn again from the saved results (every variant), as the README's tables are:
    saved = json.loads(result.results_path.read_text())
    again = sfa.semantic_focus_headline(saved["variants"], saved["comparisons"], 0.95, compare=None)
    assert [row[:3] for row in again.rows] == [row[:3] for row in result.headline.rows]


def test_bad_accuracy_option(tmp_path):
    spec = stub_spec(epochs=1, seeds=(0,))
    spec = ExperimentSpec.from_dict({**spec.to_dict(), "analysis": {"accuracy": 1.5}})
    with pytest.raises(ValueError, match=r"analysis.accuracy must be in \(0, 1\]"):
        run_experiment(spec, runs_dir=tmp_path, train_fn=stub_train, progress=False)


def test_median_band_over_runs_of_different_lengths():
    band = sfa.band([[[0, 1, 2], [1.0, 2.0, 3.0]], [[0, 1], [3.0, 4.0]]])
    assert list(band.x) == [0.0, 1.0, 2.0] and list(band.runs) == [2, 2, 1]
    assert list(band.median) == [2.0, 3.0, 3.0]
    assert list(band.low) == [1.5, 2.5, 3.0]


def test_recall_extension_labels_the_layer_ablation():
    from workbench.experiments import analyses

    spec = load_spec("semantic_focus_recall")
    labels = {analyses.method_label(config) for config in spec.grid()}
    assert {"dense", "top_k(k=5)", "top_k(k=5) layers 0", "top_k(k=5) layers 1"} <= labels

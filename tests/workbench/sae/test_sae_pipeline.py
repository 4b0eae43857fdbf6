"""SAEs of workbench runs end to end (the acceptance numbers), of MiniLM over a text file, and the
``workbench sae`` commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.models import ModelConfig
from workbench.runs import Run
from workbench.sae import (
    SAEConfig,
    TrainedSAE,
    evaluate_saved,
    feature_report,
    load_sae,
    subject,
    top_examples,
    train_run_sae,
    train_text_sae,
)
from workbench.train import TrainConfig, train

RECALL = TrainConfig(
    task="assoc_recall",
    task_overrides={"vocab_size": 32, "n_pairs": 4, "seq_len": 16},
    model=ModelConfig(n_layers=2, d_model=64, n_heads=2, d_head=32, attn_only=True),
    steps=200,
    batch_size=64,
    lr=3e-3,
    eval_every=100,
    metrics_every=50,
    device="cpu",
)
D_IN = 2 * 32
runner = CliRunner()


@pytest.fixture(scope="module")
def recall_run(tmp_path_factory) -> Run:
    """The README's associative-recall model (trained to ~100% accuracy)."""
    folder = tmp_path_factory.mktemp("runs") / "recall" / "dense"
    train(RECALL, folder, progress=False)
    return Run(folder)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("runs") / "recall" / "top_k"
    config = RECALL.replace(
        steps=60, sparse={"method": "top_k", "hparams": {"k": 3}, "layers": [1]}
    )
    train(config, folder, progress=False)
    return Run(folder)


ACCEPTANCE = SAEConfig(architecture="topk", expansion=8, k=8, steps=1000, device="cpu")


@pytest.fixture(scope="module")
def recall_sae(recall_run) -> TrainedSAE:
    """A TopK SAE (d_sae = 8 d_in, k = 8) on layer 1 of the recall model."""
    return train_run_sae(recall_run, 1, ACCEPTANCE, progress=False)


def test_topk_sae_on_associative_recall_meets_the_acceptance_numbers(
    recall_run, recall_sae
) -> None:
    trained = recall_sae
    metrics = trained.metadata["metrics"]
    assert trained.sae.cfg.d_sae == 8 * D_IN
    assert metrics["fvu"] < 0.1, metrics
    assert metrics["l0"] <= D_IN / 4, metrics
    assert metrics["metric"] == "accuracy" and metrics["clean"] > 0.95
    assert abs(metrics["spliced"] - metrics["clean"]) < 0.03, metrics
    assert metrics["loss_recovered"] > 0.9, metrics
    assert recall_run.sae_names() == ["L1-topk"] and trained.folder == recall_run.sae_folder(
        "L1-topk"
    )
    assert trained.metadata["harvest"]["rows"] == 4096 * 4  # every pair is queried
    assert trained.metadata["dense"] is True and trained.metadata["step"] == 200
    # the same evaluation again gives the stored numbers; another seed close ones
    again = evaluate_saved(trained.folder)
    assert again.pop("eval_source") == metrics["eval_source"] and again["metric"] == "accuracy"
    numbers = {key: value for key, value in metrics.items() if isinstance(value, float)}
    assert {key: again[key] for key in numbers} == pytest.approx(numbers)
    other = evaluate_saved(trained.folder, seed=7, examples=256)
    assert abs(other["fvu"] - metrics["fvu"]) < 0.05
    with pytest.raises(FileExistsError):
        train_run_sae(recall_run, 1, ACCEPTANCE, progress=False)


def test_features_of_the_recall_sae_read_the_task(recall_sae) -> None:
    trained = load_sae(recall_sae.folder)
    found = subject(trained, examples=512)
    report = feature_report(trained.sae, found.model, found.source, 1, sparse=found.sparse)
    summary = report.summary()
    assert summary["rows"] == 512 * 4 and summary["alive"] > 32
    dedicated = {entry["variable"]: entry["dedicated"] for entry in summary["variables"]}
    # a trained recall model's layer-1 output names the queried key and what it must output
    assert dedicated["query"] >= 8, summary
    assert 0 < summary["relevant_share"] <= 1, summary
    feature = int(report.strongest_features(1)[0])
    shown = top_examples(report, trained.sae, found.model, found.source, 1, feature, n=3)
    assert len(shown) == 3 and shown[0]["activation"] >= shown[-1]["activation"] > 0
    assert len(shown[0]["tokens"]) == len(shown[0]["attribution"]) == 16
    assert shown[0]["relevant"] and all(0 <= p < 16 for p in shown[0]["relevant"])


def test_sparse_runs_are_harvested_through_their_method_or_densely(sparse_run) -> None:
    config = SAEConfig(expansion=2, k=4, steps=50, device="cpu")
    through_method = train_run_sae(sparse_run, 1, config, examples=256, progress=False)
    dense = train_run_sae(sparse_run, 1, config, examples=256, dense=True, progress=False)
    assert through_method.name == "L1-topk" and dense.name == "L1-topk-dense"
    assert through_method.metadata["harvest"]["sparse"]["method"]["name"] == "top_k"
    assert through_method.metadata["dense"] is False
    assert dense.metadata["harvest"]["sparse"] is None and dense.metadata["dense"] is True
    assert subject(through_method).sparse is not None and subject(dense).sparse is None


def test_minilm_sae_over_a_text_file(tmp_path) -> None:
    text = tmp_path / "text.txt"
    sentences = [
        f"The {animal} {verb} over the {thing} while the {other} watched from the {place}."
        for animal in ("fox", "cat", "dog", "owl")
        for verb in ("jumped", "looked", "ran")
        for thing, other, place in (("fence", "farmer", "barn"), ("river", "child", "bridge"))
    ]
    text.write_text(" ".join(sentences * 2), encoding="utf-8")
    config = SAEConfig(expansion=2, k=16, steps=300, batch_size=128, device="cpu")
    trained = train_text_sae(
        text, 3, tmp_path / "sae", config, window=64, eval_windows=2, progress=False
    )
    metrics = trained.metadata["metrics"]
    assert metrics["metric"] == "cosine" and metrics["kl"] is None
    assert metrics["fvu"] < 0.5 and metrics["l0"] <= 16
    assert 0 <= metrics["loss_spliced"] < metrics["loss_zero"]
    assert trained.metadata["harvest"]["source"]["stop"] is not None
    found = subject(trained)
    assert found.source.start == trained.metadata["harvest"]["source"]["stop"]
    report = feature_report(trained.sae, found.model, found.source, 3)
    assert report.relevant_share is None and set(report.variables) == {"token", "previous"}
    shown = top_examples(
        report, trained.sae, found.model, found.source, 3, int(report.strongest_features(1)[0]), n=2
    )
    assert shown[0]["tokens"][0] == "[CLS]" and shown[0]["relevant"] == []


def test_cli_trains_evaluates_and_browses(recall_run, tmp_path) -> None:
    result = runner.invoke(
        app, ["sae", "train", str(recall_run.path), "--layer", "0", "--steps", "60", "--name", "cli",
              "--examples", "512", "--eval-examples", "256", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fvu" in result.output and "loss_recovered" in result.output
    folder = recall_run.sae_folder("cli")
    assert (folder / "figures" / "training.html").is_file()
    assert json.loads((folder / "workbench.json").read_text())["layer"] == 0
    result = runner.invoke(app, ["sae", "eval", str(folder), "--examples", "128"])
    assert result.exit_code == 0 and "l0" in result.output, result.output
    result = runner.invoke(
        app, ["sae", "features", str(folder), "--top", "2", "--rows", "3", "--examples", "128"]
    )
    assert result.exit_code == 0, result.output
    assert "values with a dedicated feature" in result.output
    written = sorted(path.name for path in (folder / "figures").glob("*.html"))
    assert {"density.html", "heads.html", "variable-target.html"} <= set(written)
    assert len([name for name in written if name.startswith("feature-")]) == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--layer", "5"], "layer must be an integer in [0, 1]"),
        (["--k", "0"], "k must be in [1, inf], got 0"),
        (["--k", "1000"], "k must be at most d_sae = expansion * d_in = 512"),
        (["--architecture", "gated"], "architecture must be one of"),
        (["--positions", "some"], "positions must be 'scored' or 'all'"),
    ],
)
def test_cli_names_the_bad_parameter(recall_run, arguments, message) -> None:
    result = runner.invoke(app, ["sae", "train", str(recall_run.path), "--steps", "5", *arguments])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_cli_refuses_missing_inputs(tmp_path) -> None:
    result = runner.invoke(app, ["sae", "train"])
    assert result.exit_code == 2 and "RUN or --text" in result.output
    result = runner.invoke(app, ["sae", "features", str(tmp_path)])
    assert result.exit_code == 2 and "holds no SAE" in " ".join(result.output.split())


def test_attention_saes_experiment_compares_methods_and_reuses_its_saes(tmp_path) -> None:
    from workbench.experiments import ExperimentSpec, load_spec, run_experiment
    from workbench.runs import Analysis

    bundled = load_spec("attention_saes").to_dict()
    spec = ExperimentSpec.from_dict(
        bundled
        | {
            "base": bundled["base"] | {"steps": 40, "eval_every": 20},
            "sweep": {"sparse": [None, {"method": "top_k", "hparams": {"k": 4}}]},
            "seeds": [0],
            "analysis": bundled["analysis"]
            | {"sae": {"expansion": 2, "k": 4, "steps": 40}, "examples": 256},
            "quick": {},
        }
    )
    result = run_experiment(spec, runs_dir=tmp_path, progress=False)
    methods = {row["method"]: row for row in result.results["methods"]}
    assert set(methods) == {"dense", "top_k(k=4)"}
    assert all(row["l0"] == pytest.approx(4.0) for row in methods.values())
    assert {"dedicated_query", "dedicated_target", "dedicated_source"} <= set(methods["dense"])
    assert [row[0] for row in result.headline.rows] == ["dense", "top_k(k=4)"]
    assert {path.name for path in result.figures} == {"comparison.html", "dedicated.html"}
    hashes = [record.config_hash for record in result.runs]
    assert Analysis(result.directory).run_names() == hashes  # as every analysis names its runs
    name = result.results["sae"]
    saved = sorted(tmp_path.glob(f"attention_saes/*/saes/{name}/workbench.json"))
    assert len(saved) == 2
    stamps = [path.stat().st_mtime_ns for path in saved]
    again = run_experiment(spec, runs_dir=tmp_path, progress=False)  # reuses runs and SAEs
    assert [path.stat().st_mtime_ns for path in saved] == stamps
    assert again.results["methods"] == result.results["methods"]


def test_dashboard_and_report_show_the_features_of_a_runs_sae(recall_run, recall_sae, tmp_path):
    from workbench.dashboard import sae_tab
    from workbench.dashboard.data import Catalogue
    from workbench.dashboard.report import write_report

    catalogue = Catalogue(recall_run.path.parent.parent, sae_examples=64)
    value = f"recall/dense/{recall_sae.name}"
    assert value in [found for found, _ in catalogue.saes()]
    shown, note = sae_tab.summary(catalogue, value)
    assert note is None and len(shown) == 2  # metrics table, training curve
    figures, options, feature = sae_tab.features(catalogue, value)
    assert feature == options[0]["value"] and len(figures) >= 3  # density, heads, variables
    examples = sae_tab.examples(catalogue, value, feature)
    assert f"feature {feature}" in examples.figure.layout.title.text
    assert "feature must be" in sae_tab.examples(catalogue, value, 10**6).children
    report = write_report(
        recall_run.path, tmp_path / "run.html", methods=["top_k"], sae_examples=64
    )
    text = report.read_text(encoding="utf-8")
    assert f"<h2>SAE {value}</h2>" in text and 'class="problem"' not in text

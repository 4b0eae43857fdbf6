"""`workbench.metrics.fidelity`, its figure and the ``sparsify-eval`` command (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from test_attention import SEQ, hf_model, padding_mask, tl_model, tokens
from typer.testing import CliRunner

import toy_tasks
import workbench.sparse
from workbench.cli import app
from workbench.metrics.fidelity import fidelity
from workbench.models import toy_model
from workbench.viz.fidelity import fidelity_figure


def test_keep_all_method_has_full_recall_and_no_error() -> None:
    method = workbench.sparse.get("sink_window", window=SEQ)
    mask = padding_mask(left=True)
    report = fidelity(tl_model("rotary"), tokens(), method, block_size=16, attention_mask=mask)
    assert [layer.layer for layer in report.layers] == [0, 1]
    for layer in report.layers:
        assert layer.recall == pytest.approx(1.0, abs=1e-5)
        assert layer.density == pytest.approx(1.0)
        assert layer.output_error < 1e-5
    assert report.output_error < 1e-5
    assert 0 <= report.kl < 1e-8 and report.cosine is None
    json.dumps(report.to_dict())


def test_recall_matches_the_dense_pattern() -> None:
    model = tl_model("standard")
    x, mask = tokens(), padding_mask(left=True)
    method = workbench.sparse.get("sink_window", sink=1, window=3)
    report = fidelity(model, x, method, block_size=16, attention_mask=mask)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, attention_mask=mask)
    positions = torch.arange(SEQ)
    real = mask.bool()  # [batch, pos]
    first_real = real.int().argmax(1)  # [batch]: the sink of each example is its first real token
    behind = positions[:, None] - positions[None, :]  # [query, key]
    selected = (positions == first_real[:, None])[:, None, :] | ((behind >= 0) & (behind < 3))
    for layer in report.layers:
        pattern = cache["pattern", layer.layer]  # [batch, head, query, key]
        kept = (selected & real[:, None, :])[:, None]  # [batch, 1, query, key]
        inside = (pattern * kept).sum(-1)  # [batch, head, query]
        direct = inside.permute(0, 2, 1)[real].mean()
        assert layer.recall == pytest.approx(direct.item(), abs=1e-5)
        assert layer.recall < 0.95 and layer.density < 0.9 and layer.output_error > 0
    assert report.kl > 0 and report.output_error > 0


def test_heads_and_layers_restrict_the_report() -> None:
    method = workbench.sparse.get("top_k", k=2)
    report = fidelity(tl_model("standard"), tokens(), method, layers=[1], heads=[0], block_size=16)
    assert [layer.layer for layer in report.layers] == [1]
    assert report.settings == {"layers": [1], "heads": [0], "block_size": 16}
    assert report.layers[0].recall < 1 and report.kl >= 0


def test_accuracy_delta_on_a_toy_task() -> None:
    task = toy_tasks.get("assoc_recall", n_pairs=4, seq_len=32, vocab_size=64)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    report = fidelity(
        toy_model(task),
        batch.inputs,
        workbench.sparse.get("top_k", k=2),
        block_size=16,
        targets=batch.targets,
        loss_mask=batch.loss_mask,
    )
    assert 0 <= report.dense_accuracy <= 1 and 0 <= report.sparse_accuracy <= 1
    assert report.accuracy_delta == report.sparse_accuracy - report.dense_accuracy
    with pytest.raises(ValueError, match="together"):
        fidelity(
            toy_model(task), batch.inputs, workbench.sparse.get("top_k"), targets=batch.targets
        )


def test_encoder_reports_cosine_similarity_with_padding() -> None:
    model, x, mask = hf_model("minilm"), tokens(), padding_mask(left=False)
    inputs = {"input_ids": x, "attention_mask": mask}
    keep_all = fidelity(model, inputs, workbench.sparse.get("block_top_k", k=64), block_size=16)
    assert keep_all.kl is None and keep_all.cosine == pytest.approx(1.0, abs=1e-5)
    assert keep_all.mean("recall") == pytest.approx(1.0, abs=1e-5)
    sparse = fidelity(model, inputs, workbench.sparse.get("sink_window", window=2), block_size=16)
    assert sparse.cosine < 1 and sparse.mean("recall") < 1
    figure = fidelity_figure([keep_all.to_dict(), sparse.to_dict()])
    assert len(figure.data) == 3


@pytest.mark.parametrize("model", ["toy", "minilm"])
def test_sparsify_eval_command_writes_results_and_figure(tmp_path, model: str) -> None:
    out = tmp_path / ("minilm" if model == "minilm" else "toy-assoc_recall")
    arguments = ["sparsify-eval", "--model", model, "--methods", "top_k,sink_window,a_shape"]
    arguments += ["--set", "top_k.k=3", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, arguments)  # nothing is replaced silently
    assert again.exit_code != 0 and "--overwrite" in again.output
    results = json.loads((out / "results.json").read_text())
    assert [report["method"] for report in results["reports"]] == [
        "top_k",
        "sink_window",
        "a_shape",
    ]
    assert results["reports"][0]["hyper_parameters"] == {"k": 3}
    assert results["reports"][1]["hyper_parameters"] == {"sink": 4, "window": 16}  # short input
    assert (out / "fidelity.html").stat().st_size > 0
    assert "sink_window" in result.output


def test_sparsify_eval_of_a_text_file_measures_the_padded_batch(tmp_path) -> None:
    """``--text-file``: its lines are one padded batch; NSA and delta (which select among real
    keys only because each example is attended alone) run on it."""
    texts = tmp_path / "texts.txt"
    texts.write_text("a short line\n" + "a much longer line of text to pad the other one " * 3)
    arguments = ["sparsify-eval", "--model", "minilm", "--text-file", str(texts)]
    result = CliRunner().invoke(
        app, [*arguments, "--methods", "top_k,nsa,delta", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    reports = json.loads((tmp_path / "minilm" / "results.json").read_text())["reports"]
    assert [report["method"] for report in reports] == ["top_k", "nsa", "delta"]
    assert all(0 < report["mean_recall"] < 1 for report in reports)


def test_sparsify_eval_compares_the_registered_methods_by_default(tmp_path, monkeypatch) -> None:
    import workbench.model_commands

    defaults = workbench.model_commands.default_methods()
    assert defaults == sorted(defaults) and set(defaults) <= set(workbench.sparse.names())
    assert {name for name in workbench.sparse.names() if name not in defaults} == {
        name
        for name in workbench.sparse.names()
        if workbench.sparse.method_class(name).needs_calibration
    }
    monkeypatch.setattr(workbench.model_commands, "default_methods", lambda: ["quest", "power"])
    result = CliRunner().invoke(app, ["sparsify-eval", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    reports = json.loads((tmp_path / "toy-assoc_recall" / "results.json").read_text())["reports"]
    assert [report["method"] for report in reports] == ["quest", "power"]
    assert reports[0]["hyper_parameters"] == {"page_size": 16, "budget": 16}  # short input


def test_sparsify_eval_rejects_unknown_methods(tmp_path) -> None:
    result = CliRunner().invoke(app, ["sparsify-eval", "--methods", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "nope" in result.output


def test_sparsify_eval_bad_layers_is_a_usage_error(tmp_path) -> None:
    for layers in ("x", "7"):
        arguments = [
            "sparsify-eval",
            "--methods",
            "top_k",
            "--layers",
            layers,
            "--out",
            str(tmp_path),
        ]
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 2 and "--layers" in result.output


def test_sparsify_eval_warns_when_a_method_keeps_everything(tmp_path) -> None:
    """A window longer than the input keeps every entry: the table says so instead of passing it
    off as a perfect method; the accuracy column is there for a toy task."""
    arguments = ["sparsify-eval", "--methods", "sink_window,top_k", "--out", str(tmp_path)]
    result = CliRunner().invoke(
        app, [*arguments, "--set", "sink_window.window=4096"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "warning: sink_window kept every visible entry" in result.output
    assert "warning: top_k" not in result.output
    assert "accuracy delta" in result.output

"""The run store (`workbench.runs`): metrics series, run folders, the index."""

import json

import pytest
import yaml

from workbench.runs import RunStore, attention_series, metric_series, read_metrics


def test_read_metrics_skips_a_truncated_last_line_and_series_keeps_last_value(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        json.dumps({"step": 0, "loss": 1.0, "eval_loss": 0.9}),
        json.dumps({"step": 10, "loss": 0.5}),
        json.dumps({"step": 10, "loss": 0.4, "eval_loss": 0.3}),  # resumed run re-logs step 10
        '{"step": 20, "lo',
    ]
    path.write_text("\n".join(lines))
    records = read_metrics(path)
    assert len(records) == 3
    steps, values = metric_series(records, "eval_loss")
    assert steps.tolist() == [0, 10] and values.tolist() == [0.9, 0.3]
    assert metric_series(records, "loss")[1].tolist() == [1.0, 0.4]


def test_attention_series_reads_nested_layer_head_metrics():
    records = [
        {"step": 0, "loss": 1.0},
        {"step": 10, "attention": {"relevant_mass": [[0.1, 0.2], [0.3, 0.4]]}},
        {"step": 5, "attention": {"relevant_mass": [[0.0, 0.1], [0.2, 0.3]]}},
    ]
    steps, values = attention_series(records, "relevant_mass")
    assert steps.tolist() == [5, 10] and values.shape == (2, 2, 2)
    assert values[1, 1, 0] == 0.3
    assert attention_series(records, "entropy")[0].size == 0


def test_run_store_lists_finds_and_indexes_runs(tmp_path):
    """Runs are folders with a config.yaml; analyses hold an experiment.yaml; the index reads the
    status and last evaluation of each run; `find` takes a hash prefix."""
    store = RunStore(tmp_path)
    finished = store.run("toy", "aaa111")
    finished.write_config(
        {"task": {"name": "assoc_recall"}, "seed": 0, "sparse": {"method": "top_k", "hparams": {}}}
    )
    finished.metrics_path.write_text(
        json.dumps({"step": 0, "eval_loss": 2.0}) + "\n" + json.dumps({"step": 5, "loss": 1.0})
    )
    finished.write_result({"seconds": 1.0})
    unfinished = store.run("toy", "bbb222")
    unfinished.write_config(
        {"task": "assoc_recall", "seed": 1, "sparse_method": None}
    )  # older schema
    unfinished.metrics_path.write_text(json.dumps({"step": 0, "eval_loss": 2.5}) + "\n")
    empty = store.run("other", "ccc333")
    empty.write_config({"seed": 2})
    analysis = store.analysis("toy", "eee555")
    analysis.write({"name": "toy"}, {"runs": [{"config_hash": "aaa111"}]})

    assert [run.name for run in store.runs()] == ["ccc333", "aaa111", "bbb222"]
    assert [run.name for run in store.runs("toy")] == ["aaa111", "bbb222"]
    assert [a.run_names() for a in store.analyses("toy")] == [["aaa111"]]
    assert store.find("bb").path == unfinished.path
    assert [run.status() for run in (finished, unfinished, empty)] == [
        "finished",
        "unfinished",
        "empty",
    ]
    rows = {row["config_hash"]: row for row in store.index()}
    assert rows["aaa111"] == {
        "experiment": "toy",
        "config_hash": "aaa111",
        "status": "finished",
        "task": "assoc_recall",
        "method": "top_k",
        "seed": 0,
        "last_step": 5,
        "eval_loss": 2.0,
    }
    assert rows["bbb222"]["method"] == "dense" and rows["ccc333"]["last_step"] is None
    assert yaml.safe_load((finished.path / "config.yaml").read_text())["seed"] == 0


def test_a_run_holding_another_config_is_refused(tmp_path):
    run = RunStore(tmp_path).run("toy", "aaa111")
    run.write_config({"seed": 0})
    run.write_result({})
    assert run.is_finished({"seed": 0})
    with pytest.raises(RuntimeError, match="another config"):
        run.is_finished({"seed": 1})

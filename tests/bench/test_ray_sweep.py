"""`bench/ray_sweep.py` on CPU with the process executor (the Ray executor itself:
tests/workbench/test_ray_executor.py): a sweep stopped once its first run finished and
restarted equals the reference sweep run by run, nothing trained twice, nothing lost."""

from __future__ import annotations

import json

import yaml

from bench.ray_sweep import compare_results, kept_through_restart, main, parse_samples

SPEC = {
    "name": "tiny",
    "description": "three short runs, the middle one long enough to be stopped",
    "base": {
        "task": {"name": "single_location", "seq_len": 8, "d": 4, "burstiness": 1},
        "model": {"n_layers": 1, "d_model": 8},
        "sparse": None,
        "steps": 10,
        "metrics_every": 1,
        "eval_every": 1_000_000,
    },
    "sweep": {"task.seq_len,steps": [[8, 30], [12, 600], [16, 30]]},
}


def test_stopped_and_restarted_sweep_equals_the_reference(tmp_path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "sweep.json"
    options = ["--executor", "process", "--workers", "1", "--gpus", "0", "--kill-after-runs", "1"]
    main([str(spec), *options, "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads(out.read_text())
    spread = result["phases"]["spread"]
    assert spread["first"]["killed"] and spread["first"]["exit"] == 143
    assert spread["restart"]["exit"] == 0 and result["phases"]["reference"]["exit"] == 0
    check = spread["restart_check"]
    assert check["finished_before_kill"] >= 1 and check["trained_again"] == check["lost"] == []
    comparison = result["comparison"]
    assert comparison["same_hashes"] and comparison["runs_compared"] == result["runs"] == 3
    assert comparison["runs_bitwise_equal"] == 3  # resumed from checkpoints: bitwise
    assert result["device"]["gpus"] == [] and result["runs_per_hour"]["spread"] > 0
    assert out.with_suffix(".html").stat().st_size > 0


def test_comparison_and_restart_check_report_differences() -> None:
    reference = {"a": {"metrics": {"eval_loss": 0.5, "step": 10}}, "b": {"metrics": {"x": 1.0}}}
    other = {"a": {"metrics": {"eval_loss": 0.25, "step": 10}}, "c": {"metrics": {}}}
    comparison = compare_results(reference, other)
    assert not comparison["same_hashes"]
    assert comparison["only_in_reference"] == ["b"] and comparison["only_in_other"] == ["c"]
    assert comparison["runs_compared"] == 1 and comparison["runs_bitwise_equal"] == 0
    assert comparison["max_abs_metric_difference"] == 0.25
    check = kept_through_restart({"a": {"sha": 1}, "b": {"sha": 2}}, {"a": {"sha": 3}})
    assert check == {"finished_before_kill": 2, "trained_again": ["a"], "lost": ["b"]}


def test_gpu_samples_are_parsed_from_nvidia_smi_rows() -> None:
    rows = parse_samples("0, 97, 1234\n1, 12, 80\nN/A, [Not Supported], 3\n", t=2.5)
    assert rows == [
        {"t": 2.5, "gpu": 0, "utilization": 97.0, "memory_mib": 1234.0},
        {"t": 2.5, "gpu": 1, "utilization": 12.0, "memory_mib": 80.0},
    ]

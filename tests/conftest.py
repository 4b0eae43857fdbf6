"""Test-wide settings. On machines of two cores or fewer (as the CI machine), torch's default of
one thread per core slows every process down as soon as anything else runs (a 50-step training run
took 130 s with 2 threads and 50 s with 1 on a loaded 2-core machine): the tests, and the
notebook kernels and worker processes they start, use one thread each there."""

import os
import sys

import pytest

if (os.cpu_count() or 1) <= 2:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def op_counter() -> type:
    """`workbench.devtools.op_counts.OpCounter`, to count a call's launches and host syncs:
    ``with op_counter() as counted: ...; counted.read_backs``."""
    from workbench.devtools.op_counts import OpCounter

    return OpCounter


DASHBOARD_EXPERIMENT = "recall"
"""The experiment folder of the dashboard's test runs."""


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory):
    """A run store for the dashboard's tests (``tests/workbench/test_dashboard.py``,
    ``tests/browser``), as ``workbench run`` lays it out: two tiny associative-recall runs (dense,
    and top-k on layer 1 with stability metrics; 20 steps, a checkpoint and a final trace each), a
    run with only its config (half-written), one whose config is not YAML, and an emergence
    analysis holding a power-law fit."""
    from workbench.analysis import fit_power_law
    from workbench.experiments.emergence_analysis import fits_from_length
    from workbench.experiments.spec import config_hash
    from workbench.models import ModelConfig
    from workbench.runs import RunStore
    from workbench.train import TrainConfig, train

    store = RunStore(tmp_path_factory.mktemp("dashboard") / "runs")
    base = TrainConfig(
        task="assoc_recall",
        task_overrides={"vocab_size": 32, "n_pairs": 4, "seq_len": 16},
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, attn_only=True),
        steps=20,
        batch_size=32,
        lr=3e-3,
        eval_every=10,
        metrics_every=10,
        eval_batch_size=16,
        eval_metrics=("attention",),
        device="cpu",
    )
    sparse = base.replace(
        sparse={"method": "top_k", "hparams": {"k": 3}, "layers": [1]},
        eval_metrics=("attention", "stability"),
    )
    for config in (base, sparse):
        run = store.run(DASHBOARD_EXPERIMENT, config_hash(config.to_dict()))
        run.write_config(config.to_dict())
        result = train(config, run.path, progress=False)
        run.write_result({"config_hash": run.name, "train": result.metrics})
    store.run(DASHBOARD_EXPERIMENT, "half00000000").write_config(base.to_dict())
    broken = store.run(DASHBOARD_EXPERIMENT, "broken000000")
    broken.path.mkdir(parents=True)
    (broken.path / "config.yaml").write_text("task: [not closed", encoding="utf-8")
    rows = [
        {"config_hash": f"t{T}", "T": T, "d": 4, "B": 1, "emergence_time": 3.0 * T**0.8,
         "finished": True, "last_step": 1000}
        for T in (8, 16, 32, 64)
    ]  # fmt: skip
    fit = fit_power_law({"T": [row["T"] for row in rows]}, [r["emergence_time"] for r in rows])
    store.analysis("emergence", "fit000000000").write(
        {"name": "emergence", "analysis": {"paper": "toy_model"}},
        {
            "runs": rows,
            "fit": fit.to_dict(),
            "fits_from_length": fits_from_length(rows),
            "n_runs": 4,
            "n_emerged": 4,
        },
    )
    return store.root

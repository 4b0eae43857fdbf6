"""Configs and run folders of the older schema (flat ``sparse_*`` keys, metric flags) read and
migrate to today's (``sparse``, ``eval_metrics``), without losing a run or training one again."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from workbench.cli import app
from workbench.experiments import config_hash
from workbench.experiments.migrate import migrate, migrate_spec, pin_parametrisation
from workbench.experiments.spec import ExperimentSpec
from workbench.runs import RunStore, migrate_config
from workbench.train import SparseConfig, TrainConfig
from workbench.train.checkpoint import check_resumable

OLD = {
    "task": {"name": "assoc_recall", "vocab_size": 16, "seq_len": 8, "n_pairs": 2},
    "sparse_method": "top_k",
    "sparse_hparams": {"k": 3},
    "sparse_layers": [1],
    "sparse_block_size": 64,
    "trace_metrics": True,
    "stability_metrics": False,
    "steps": 5,
}
NEW = {
    "task": {"name": "assoc_recall", "vocab_size": 16, "seq_len": 8, "n_pairs": 2},
    "sparse": {"method": "top_k", "hparams": {"k": 3}, "layers": [1]},
    "eval_metrics": ["attention"],
    "steps": 5,
}


def test_older_configs_read_as_todays() -> None:
    assert migrate_config(OLD) == NEW
    assert migrate_config(NEW) == NEW
    assert migrate_config({"sparse_method": None, "sparse_hparams": {}}) == {"sparse": None}
    assert TrainConfig.from_dict(OLD) == TrainConfig.from_dict(NEW)
    assert TrainConfig.from_dict(OLD).sparse == SparseConfig("top_k", {"k": 3}, layers=[1])
    with pytest.raises(ValueError, match="both sparse"):
        migrate_config({**NEW, "sparse_method": "top_k"})
    with pytest.raises(ValueError, match="need a sparse_method"):
        migrate_config({"sparse_hparams": {"k": 3}})


def test_a_checkpoint_of_the_older_schema_resumes() -> None:
    """`check_resumable` compares a saved config of either schema in today's."""
    config = TrainConfig.from_dict(NEW)
    saved = {**config.to_dict()}
    del saved["sparse"], saved["eval_metrics"]
    saved |= {
        key: OLD[key]
        for key in ("sparse_method", "sparse_hparams", "sparse_layers", "trace_metrics")
    }
    check_resumable(json.loads(json.dumps(saved)), config)
    with pytest.raises(ValueError, match="sparse"):
        check_resumable(saved | {"sparse_hparams": {"k": 4}}, config)


OLD_SPEC = {
    "name": "toy",
    "description": "a spec of the older schema",
    "base": {**OLD, "sparse_method": None, "sparse_hparams": {}, "sparse_layers": None},
    "sweep": {"sparse_method,sparse_hparams": [[None, {}], ["top_k", {"k": 3}]]},
    "seeds": [0, 1],
}


def write_old_experiment(folder) -> list[str]:
    """Run folders (named by the old hashes) and an analysis of `OLD_SPEC` under ``folder``."""
    spec = ExperimentSpec.from_dict(OLD_SPEC)
    store = RunStore(folder.parent)
    hashes = []
    for config in spec.configs():
        run = store.run(folder.name, config_hash(config))
        run.write_config(config)
        run.metrics_path.write_text(json.dumps({"step": 0, "eval_loss": 1.0}) + "\n")
        run.write_result({"config_hash": run.name})
        hashes.append(run.name)
    analysis = store.analysis(folder.name, spec.experiment_hash())
    configs = spec.configs()
    runs = [{"config_hash": name, "config": c} for name, c in zip(hashes, configs, strict=True)]
    analysis.write(OLD_SPEC, {"experiment_hash": spec.experiment_hash(), "runs": runs})
    return hashes


def test_migrate_renames_the_runs_to_todays_hashes_and_rewrites_the_analysis(tmp_path) -> None:
    folder = tmp_path / "runs" / "toy"
    old_hashes = write_old_experiment(folder)
    new_spec = ExperimentSpec.from_dict(migrate_spec(OLD_SPEC))
    assert new_spec.base["sparse"] is None and new_spec.base["eval_metrics"] == ["attention"]
    assert new_spec.sweep == {"sparse": [None, {"method": "top_k", "hparams": {"k": 3}}]}
    new_hashes = [config_hash(config) for config in new_spec.configs()]
    assert not set(new_hashes) & set(old_hashes)

    dry = CliRunner().invoke(app, ["runs", "migrate", str(folder), "--dry-run"])
    assert dry.exit_code == 0 and "renamed 4 run folders" in dry.output
    assert sorted(run.name for run in RunStore(tmp_path / "runs").runs("toy")) == sorted(old_hashes)

    migration = migrate(folder)
    assert len(migration.renamed) == 4 and not migration.skipped
    runs = RunStore(tmp_path / "runs").runs("toy")
    assert sorted(run.name for run in runs) == sorted(new_hashes)
    for run in runs:  # today's config, the old one kept, the logs moved with the folder
        assert config_hash(run.config()) == run.name and run.metrics()
        kept = yaml.safe_load((run.path / "config.before-migration.yaml").read_text())
        assert config_hash(kept) in old_hashes
    (analysis,) = RunStore(tmp_path / "runs").analyses("toy")
    assert analysis.run_names() == new_hashes
    assert analysis.results()["experiment_hash"] == new_spec.experiment_hash()
    assert ExperimentSpec.from_dict(analysis.spec()) == new_spec
    assert (analysis.path / "results.before-migration.json").exists()
    assert not migrate(folder).renamed  # a second migration changes nothing


CONTINUOUS_SPEC = {
    "name": "toy",
    "description": "a continuous-task spec written before the parametrisation options",
    "base": {
        "task": {"name": "single_location", "seq_len": 8, "d": 4},
        "model": {"n_layers": 1, "d_model": 16},
        "steps": 5,
    },
    "sweep": {"task.seq_len": [8, 16]},
}


def test_pin_parametrisation_writes_the_library_initialisation_into_continuous_configs() -> None:
    continuous = CONTINUOUS_SPEC["base"]
    pinned = pin_parametrisation(continuous)
    assert pinned["model"] == {
        "n_layers": 1,
        "d_model": 16,
        "input_init": "transformer_lens",
        "readout_init": "transformer_lens",
    }
    assert pin_parametrisation(pinned) == pinned  # once
    chosen = {**continuous, "model": {"readout_init": "zero"}}
    assert pin_parametrisation(chosen) == chosen  # a config that names one is today's
    assert pin_parametrisation(NEW) == NEW  # token tasks embed with TransformerLens' tables


def test_migrate_pins_the_parametrisation_of_older_continuous_runs(tmp_path) -> None:
    folder = tmp_path / "runs" / "toy"
    spec = ExperimentSpec.from_dict(CONTINUOUS_SPEC)
    store = RunStore(folder.parent)
    old = []
    for config in spec.configs():
        run = store.run(folder.name, config_hash(config))
        run.write_config(config)
        run.write_result({"config_hash": run.name})
        old.append(run.name)
    store.analysis(folder.name, spec.experiment_hash()).write(
        CONTINUOUS_SPEC, {"runs": [{"config_hash": name} for name in old]}
    )
    assert not migrate(folder).renamed  # the same settings in today's schema: nothing to do
    migration = migrate(folder, pin_parametrisation=True)
    assert len(migration.renamed) == 2
    for run in store.runs("toy"):
        config = run.config()
        assert config_hash(config) == run.name and run.name not in old
        assert TrainConfig.from_dict(config).model.input_init == "transformer_lens"
    (analysis,) = store.analyses("toy")
    assert analysis.spec()["base"]["model"]["readout_init"] == "transformer_lens"
    assert sorted(analysis.run_names()) == sorted(run.name for run in store.runs("toy"))

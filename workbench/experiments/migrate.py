"""Bring run folders and analyses written under the older config schema to today's.

Older specs and run configs held flat ``sparse_method`` / ``sparse_hparams`` / ``sparse_layers`` /
``sparse_block_size`` keys and ``trace_metrics`` / ``stability_metrics`` flags; today's hold
``sparse: {method, hparams, ...}`` and ``eval_metrics: [...]`` (`workbench.runs.migrate_config`).
Run folders are named by the hash of their config dict, so a spec in today's schema hashes its
runs differently and would train them again. `migrate` renames each old run folder to the hash
its config has in today's schema (matched as a `workbench.train.TrainConfig`, so equal settings
written differently match), writes today's ``config.yaml`` and keeps the old one as
``config.before-migration.yaml``; an analysis folder's ``experiment.yaml`` and ``results.json``
are rewritten with the new spec and hashes (the old files kept beside them likewise). Nothing is
deleted, and a run whose new folder exists already is left alone and reported.

Configs written before `workbench.models.ModelConfig` had ``input_init`` and ``readout_init`` were
trained with TransformerLens' initialisation of a continuous model's input projection and readout;
today's defaults are the papers' (fan-in). Nothing in such a config tells it apart from one of
today's, so the owner says so: ``migrate(folder, pin_parametrisation=True)`` (``workbench runs
migrate --pin-parametrisation``) first writes ``input_init: transformer_lens`` and
``readout_init: transformer_lens`` into every continuous-task config (runs and specs) that names
neither (`pin_parametrisation`), then migrates as above.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.experiments.spec import ExperimentSpec, config_hash
from workbench.runs import (
    CONFIG,
    EXPERIMENT,
    RESULTS,
    Analysis,
    Run,
    experiment_contents,
    is_run,
    migrate_config,
)

KEPT_SUFFIX = ".before-migration"
"""Suffix of the files a migration keeps (``config.before-migration.yaml``, ...)."""
COUPLED_SPARSE_AXIS = "sparse_method,sparse_hparams"
OLDER_KEYS = ("sparse_", "trace_metrics", "stability_metrics")
LIBRARY_PARAMETRISATION = {"input_init": "transformer_lens", "readout_init": "transformer_lens"}
"""What continuous models were initialised with before the parametrisation options existed."""


@dataclass(frozen=True)
class Migration:
    """What `migrate` did: ``renamed`` (old folder -> new folder), ``skipped`` (folder, reason)
    and the analyses rewritten."""

    renamed: list[tuple[Path, Path]]
    skipped: list[tuple[Path, str]]
    analyses: list[Path]


def migrate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict of the older schema in today's: ``base`` and ``quick.base`` through
    `migrate_config`; the sweep axis ``sparse_method,sparse_hparams`` becomes ``sparse``
    (``[method, hparams]`` -> ``{method, hparams}``, ``[null, {}]`` -> null). Other sweep keys are
    kept; one naming an older key otherwise raises ``ValueError``."""
    data = dict(spec)
    data["base"] = migrate_config(data.get("base") or {})
    data["sweep"] = _migrate_sweep(data.get("sweep") or {})
    if isinstance(data.get("quick"), Mapping):
        quick = dict(data["quick"])
        if "base" in quick:
            quick["base"] = migrate_config(quick["base"])
        if "sweep" in quick:
            quick["sweep"] = _migrate_sweep(quick["sweep"])
        data["quick"] = quick
    return data


def pin_parametrisation(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config (a run's, or a spec's ``base``) of a continuous task with the initialisation it was
    trained with before the options existed (`LIBRARY_PARAMETRISATION`) written into ``model``
    wherever it names neither option; other configs come back unchanged."""
    import toy_tasks

    data = dict(config)
    task = data.get("task")
    name = task.get("name") if isinstance(task, Mapping) else task
    if not isinstance(name, str) or toy_tasks.task_class(name).kind != "continuous":
        return data
    model = dict(data.get("model") or {})
    if not set(LIBRARY_PARAMETRISATION) & set(model):
        data["model"] = model | LIBRARY_PARAMETRISATION
    return data


def _migrate_sweep(sweep: Mapping[str, Any]) -> dict[str, Any]:
    migrated = {}
    for key, values in sweep.items():
        if key == COUPLED_SPARSE_AXIS:
            migrated["sparse"] = [
                None if method is None else {"method": method, "hparams": dict(hparams or {})}
                for method, hparams in values
            ]
        elif any(part.startswith(OLDER_KEYS) for part in key.split(",")):
            raise ValueError(f"sweep key {key!r}: migrate it by hand (sparse / eval_metrics)")
        else:
            migrated[key] = values
    return migrated


def _canonical(config: Mapping[str, Any]) -> str:
    """The settings of a config in either schema, written one way (to match equal settings)."""
    from workbench.train import TrainConfig

    return json.dumps(TrainConfig.from_dict(config).to_dict(), sort_keys=True, default=str)


def _targets(spec: ExperimentSpec) -> dict[str, dict[str, Any]]:
    """``{canonical settings: config dict}`` of every run of ``spec`` and of its quick variant."""
    configs = [*spec.configs(), *spec.quick_variant().configs()]
    return {_canonical(config): config for config in configs}


def migrate_runs(
    runs: list[Run],
    targets: Mapping[str, dict[str, Any]],
    *,
    dry_run: bool = False,
    pin: bool = False,
) -> Migration:
    """Rename the ``runs`` whose settings are those of a config of ``targets`` (`_targets`)
    under another hash (see the module docstring); with ``pin``, each run's config is first read
    through `pin_parametrisation`."""
    renamed: list[tuple[Path, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for run in runs:
        config = run.config()
        if config is not None and pin:
            config = pin_parametrisation(config)
        target = None if config is None else targets.get(_canonical(config))
        if target is None:
            skipped.append((run.path, "no config.yaml" if config is None else "not in the spec"))
            continue
        new = run.path.with_name(config_hash(target))
        if new == run.path:
            continue
        if new.exists():
            skipped.append((run.path, f"{new.name} exists already"))
            continue
        renamed.append((run.path, new))
        if not dry_run:
            _keep(run.path / CONFIG)
            run.path.rename(new)
            Run(new).write_config(target)
    return Migration(renamed, skipped, [])


def migrate_analysis(
    analysis: Analysis,
    renamed: list[tuple[Path, Path]],
    *,
    dry_run: bool = False,
    pin: bool = False,
) -> None:
    """Rewrite an analysis folder's ``experiment.yaml`` (today's schema; with ``pin``, its base
    through `pin_parametrisation`) and ``results.json`` (new run hashes and configs, new
    experiment hash); the old files are kept beside them."""
    spec = _analysis_spec(analysis, pin)
    results = analysis.results()
    if dry_run:
        return
    _keep(analysis.path / EXPERIMENT)
    if results is not None:
        text = json.dumps(results)
        for old, new in renamed:
            text = text.replace(old.name, new.name)
        results = json.loads(text)
        configs = {config_hash(config): config for config in _targets(spec).values()}
        for run in results.get("runs", []):
            if "config" in run:
                run["config"] = configs.get(run["config_hash"], run["config"])
        if "experiment_hash" in results:
            results["experiment_hash"] = spec.experiment_hash()
        _keep(analysis.path / RESULTS)
    analysis.write(spec.to_dict(), results or {})


def _analysis_spec(analysis: Analysis, pin: bool) -> ExperimentSpec:
    """An analysis folder's spec in today's schema (its base pinned with ``pin``)."""
    data = migrate_spec(analysis.spec())
    if pin:
        data["base"] = pin_parametrisation(data["base"])
    return ExperimentSpec.from_dict(data)


def migrate(
    folder: str | Path,
    spec: ExperimentSpec | None = None,
    *,
    dry_run: bool = False,
    pin_parametrisation: bool = False,
) -> Migration:
    """Migrate an experiment folder: its run folders (directly in it, or in its ``runs/``) and its
    analyses (the folder itself when it holds an ``experiment.yaml``, and those in it). The runs
    are matched against ``spec`` (today's schema), else against each analysis's own spec. With
    ``pin_parametrisation`` the runs and the analyses' specs are first read through
    `pin_parametrisation` (see the module docstring)."""
    folder = Path(folder)
    if is_run(folder):
        raise ValueError(f"{folder} is a run folder: give the experiment folder that holds it")
    analyses, runs = experiment_contents(folder)
    pin = pin_parametrisation
    specs = [spec] if spec is not None else []
    specs += [_analysis_spec(analysis, pin) for analysis in analyses]
    if not specs:
        raise ValueError(f"{folder} holds no analysis (experiment.yaml): name the spec")
    targets = {key: config for candidate in specs for key, config in _targets(candidate).items()}
    migration = migrate_runs(runs, targets, dry_run=dry_run, pin=pin)
    for analysis in analyses:
        migrate_analysis(analysis, migration.renamed, dry_run=dry_run, pin=pin)
    return Migration(migration.renamed, migration.skipped, [a.path for a in analyses])


def _keep(path: Path) -> None:
    """Copy ``path`` to ``<stem>.before-migration<suffix>`` (once: an earlier copy stays)."""
    kept = path.with_name(path.stem + KEPT_SUFFIX + path.suffix)
    if path.exists() and not kept.exists():
        kept.write_bytes(path.read_bytes())


def describe(migration: Migration) -> str:
    """A short report of a `Migration` for the command line."""
    lines = [f"renamed {len(migration.renamed)} run folders"]
    lines += [f"  {old.name} -> {new.name}" for old, new in migration.renamed]
    lines += [f"left {path} alone: {reason}" for path, reason in migration.skipped]
    lines += [f"rewrote the analysis in {path}" for path in migration.analyses]
    return "\n".join(lines)

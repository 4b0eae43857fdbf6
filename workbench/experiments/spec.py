"""Experiment specs: a base training config, a sweep grid, seeds and a ``--quick`` variant, loaded
from the YAML files of the repository's ``experiments/`` folder (shipped in the distribution as the
package data ``workbench/experiments/specs/``) or from any YAML path.

A spec file looks like::

    name: emergence
    description: Emergence time of the single-location task against T and burstiness.
    base:                     # one training-config dict (nested), the defaults of every run
      task: {name: single_location, seq_len: 64, burstiness: 1}
      model: {n_layers: 2, d_model: 64}
      sparse: null            # dense; or {method: top_k, hparams: {k: 5}}
      eval_metrics: [attention]
      steps: 20000
    sweep:                    # dotted path into `base` -> values; expanded as a grid
      task.seq_len: [32, 64, 128]
      task.burstiness: [1, 4]
      model.n_layers,model.d_model: [[2, 64], [4, 128]]   # coupled paths, one axis
      sparse: [null, {method: top_k, hparams: {k: 5}}]
    seeds: [0, 1, 2]          # every grid point runs once per seed (config key `seed`)
    quick:                    # applied by --quick: a small CPU variant
      base: {steps: 300}      # deep-merged into `base` (dotted keys allowed)
      sweep: {task.seq_len: [16, 32]}   # replaces these sweep paths
      seeds: [0]
    analysis: {paper: transformer}      # options of the experiment's analysis function

Every dotted path (sweep, quick) must name a key of ``base``, so a typo fails at load time. A
sweep key of several comma-separated paths is one grid axis whose values are lists holding one
value per path.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def _bundled_specs() -> Traversable:
    """The folder of the bundled specs: the package data ``workbench/experiments/specs`` of an
    installed distribution (pyproject.toml maps the repository's ``experiments/`` there), else, in
    a source checkout or an editable install, the repository's ``experiments/`` itself."""
    installed = files("workbench.experiments").joinpath("specs")
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "experiments"


EXPERIMENTS_DIR = _bundled_specs()
"""The folder of the bundled experiment YAML files (a `Path` unless installed in a zip)."""

SEED_KEY = "seed"
"""Config key the runner sets from ``seeds``."""

SPEC_KEYS = ("name", "description", "base", "sweep", "seeds", "quick", "analysis")
QUICK_KEYS = ("base", "sweep", "seeds")


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 12-hex-digit identity of a config: sha256 of its canonical JSON (sorted keys, no
    whitespace), so key order does not matter."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def get_path(config: Mapping[str, Any], path: str) -> Any:
    """``config["a"]["b"]`` for ``path="a.b"``; ``KeyError`` naming the path if absent."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def with_path(config: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``config`` with ``path`` (dotted, existing) set to ``value``."""
    get_path(config, path)
    updated = copy.deepcopy(dict(config))
    *parents, leaf = path.split(".")
    node = updated
    for part in parents:
        node = node[part]
    node[leaf] = copy.deepcopy(value)
    return updated


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}`` (nested dicts become paths)."""
    flat = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _check_mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{field_name} must be a mapping, got {type(value).__name__}")
    return value


def sweep_paths(key: str) -> list[str]:
    """The config paths of a sweep key: ``"a.b"`` -> ``["a.b"]``, ``"a,b.c"`` -> ``["a", "b.c"]``."""
    return [path.strip() for path in key.split(",")]


def _check_paths(base: Mapping[str, Any], keys: Sequence[str], field_name: str) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(f"{field_name}: keys must be dotted paths (strings), got {key!r}")
    for path in (path for key in keys for path in sweep_paths(key)):
        try:
            get_path(base, path)
        except KeyError:
            raise ValueError(
                f"{field_name}: {path!r} is not a key of base (top-level keys: {sorted(base)})"
            ) from None


def _check_sweep(base: Mapping[str, Any], sweep: Any, field_name: str) -> None:
    _check_mapping(sweep, field_name)
    _check_paths(base, list(sweep), field_name)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{field_name}[{key!r}] must be a non-empty list, got {values!r}")
        width = len(sweep_paths(key))
        if width > 1 and not all(isinstance(v, list) and len(v) == width for v in values):
            raise ValueError(f"{field_name}[{key!r}]: every value must be a list of {width} values")


_ABSENT = object()
"""A where-path that a swept mapping does not have (it matches no value)."""


def _swept_path(key: str, path: str) -> tuple[int, str] | None:
    """``(index, rest)``: the path of sweep ``key`` that ``path`` is, or lies inside, and the
    rest of ``path`` below it (``""`` for the swept path itself); None when it is neither."""
    for index, swept in enumerate(sweep_paths(key)):
        if path == swept:
            return index, ""
        if path.startswith(swept + "."):
            return index, path[len(swept) + 1 :]
    return None


def _inside(value: Any, rest: str) -> Any:
    """``value`` itself (``rest`` empty) or the value at the dotted path ``rest`` inside it;
    `_ABSENT` when ``value`` does not hold ``rest``."""
    if not rest:
        return value
    try:
        return get_path(value, rest)
    except KeyError:  # also a value that is no mapping
        return _ABSENT


def _check_seeds(seeds: Any, field_name: str) -> tuple[int, ...]:
    """``seeds`` (a non-empty list or tuple of distinct ints >= 0) as a tuple."""
    if (
        not isinstance(seeds, (list, tuple))
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ValueError(f"{field_name} must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{field_name} must be distinct, got {list(seeds)}")
    return tuple(seeds)


@dataclass(frozen=True)
class ExperimentSpec:
    """A named set of training runs and the analysis that summarises them.

    Attributes:
        name: identifier (file stem of the YAML spec, run folder ``runs/<name>/``).
        description: one line shown by ``workbench run --list``.
        base: the nested training-config dict shared by every run.
        sweep: ``{dotted path into base: [values]}``, expanded as a grid (in this key order);
            a key ``"path_a,path_b"`` sweeps both paths together (values ``[a, b]``).
        seeds: each grid point runs once per seed (``config["seed"]``).
        quick: the ``--quick`` variant: ``{"base": overrides, "sweep": paths, "seeds": [...]}``.
        analysis: options of the analysis function registered under ``name``.
    """

    name: str
    description: str
    base: dict[str, Any]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    quick: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the broken field."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name must be an identifier-like string, got {self.name!r}")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError("description must be a non-empty string")
        _check_mapping(self.base, "base")
        if SEED_KEY in self.base:
            raise ValueError(f"base must not set {SEED_KEY!r}: use seeds")
        _check_sweep(self.base, self.sweep, "sweep")
        _check_seeds(self.seeds, "seeds")
        _check_mapping(self.analysis, "analysis")
        self._validate_quick()
        for name in ("base", "sweep", "quick", "analysis"):
            try:
                config_hash(getattr(self, name))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{name} must hold only JSON values (strings, finite numbers, bools, null, "
                    f"lists, mappings with string keys): {error}"
                ) from None

    def _validate_quick(self) -> None:
        unknown = set(_check_mapping(self.quick, "quick")) - set(QUICK_KEYS)
        if unknown:
            raise ValueError(f"quick: unknown keys {sorted(unknown)} (allowed: {QUICK_KEYS})")
        flat = _flatten(_check_mapping(self.quick.get("base", {}), "quick.base"))
        _check_paths(self.base, list(flat), "quick.base")
        _check_sweep(self.base, self.quick.get("sweep", {}), "quick.sweep")
        if "seeds" in self.quick:
            _check_seeds(self.quick["seeds"], "quick.seeds")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentSpec:
        """Build from a parsed YAML mapping; unknown keys raise ``ValueError``."""
        data = _check_mapping(data, "spec")
        unknown = set(data) - set(SPEC_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {list(SPEC_KEYS)})")
        missing = {"name", "description", "base"} - set(data)
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        mappings = {
            key: dict(_check_mapping(data[key], key)) if data.get(key) is not None else {}
            for key in ("base", "sweep", "quick", "analysis")
        }
        seeds = data.get("seeds")
        return cls(
            name=data["name"],
            description=data["description"],
            seeds=(0,) if seeds is None else _check_seeds(seeds, "seeds"),
            **mappings,
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready mapping (inverse of `from_dict`)."""
        return {
            "name": self.name,
            "description": self.description,
            "base": copy.deepcopy(self.base),
            "sweep": copy.deepcopy(self.sweep),
            "seeds": list(self.seeds),
            "quick": copy.deepcopy(self.quick),
            "analysis": copy.deepcopy(self.analysis),
        }

    def quick_variant(self) -> ExperimentSpec:
        """This spec with ``quick`` applied (and emptied)."""
        base = self.base
        for path, value in _flatten(self.quick.get("base", {})).items():
            base = with_path(base, path, value)
        sweep = {**self.sweep, **self.quick.get("sweep", {})}
        seeds = tuple(self.quick.get("seeds", self.seeds))
        return replace(self, base=base, sweep=sweep, seeds=seeds, quick={})

    def restricted(self, where: Mapping[str, Sequence[Any]]) -> ExperimentSpec:
        """This spec with only the grid points and seeds that ``where`` allows.

        ``where`` maps a sweep path (a key of `sweep`, one path of a coupled key, or a path
        inside the mappings a path sweeps over, e.g. ``task.name`` when ``task`` is swept) or
        ``"seed"`` to the values to keep: ``{"task.seq_len": [64, 32], "seed": [0]}`` keeps the
        grid points whose ``task.seq_len`` is 64 or 32, with seed 0; a path of a coupled key
        keeps the tuples whose value at that path is allowed. A slice's runs are runs of the
        whole spec (same configs, same hashes): running the whole spec later reuses them.
        ``ValueError`` naming the path when it is neither a sweep path nor ``"seed"``, or when
        none of its sweep values is allowed."""
        _check_mapping(where, "where")
        sweep, seeds = copy.deepcopy(self.sweep), self.seeds
        for path, allowed in where.items():
            if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Sequence):
                raise TypeError(f"where[{path!r}] must be a list of values, got {allowed!r}")
            if path == SEED_KEY:
                seeds = tuple(seed for seed in seeds if seed in allowed)
                if not seeds:
                    raise ValueError(
                        f"where[{path!r}]: none of {list(allowed)} is a seed of the spec "
                        f"(seeds: {list(self.seeds)})"
                    )
                continue
            found = next(
                ((key, at) for key in sweep if (at := _swept_path(key, path)) is not None), None
            )
            if found is None:
                paths = [path for key in self.sweep for path in sweep_paths(key)]
                raise ValueError(
                    f"where: {path!r} is not a sweep path of {self.name!r} "
                    f"(sweep paths: {paths}, paths inside the mappings they sweep, or {SEED_KEY!r})"
                )
            key, (index, rest) = found
            coupled = len(sweep_paths(key)) > 1
            values = [_inside(value[index] if coupled else value, rest) for value in sweep[key]]
            kept = [value for value, at in zip(sweep[key], values, strict=True) if at in allowed]
            shown = [at for at in values if at is not _ABSENT]
            if not shown:
                raise ValueError(
                    f"where[{path!r}]: no sweep value of {sweep_paths(key)[index]!r} holds {rest!r}"
                )
            if not kept:
                raise ValueError(
                    f"where[{path!r}]: none of {list(allowed)} is among its sweep values {shown}"
                )
            sweep[key] = kept
        return replace(self, sweep=sweep, seeds=seeds)

    def grid(self) -> list[dict[str, Any]]:
        """The sweep grid: one config per combination of sweep values (first key varies
        slowest), without seeds."""
        keys = list(self.sweep)
        configs = []
        for values in itertools.product(*(self.sweep[key] for key in keys)):
            config = self.base
            for key, value in zip(keys, values, strict=True):
                paths = sweep_paths(key)
                for path, item in zip(paths, value if len(paths) > 1 else [value], strict=True):
                    config = with_path(config, path, item)
            configs.append(copy.deepcopy(config))
        return configs

    def configs(self) -> list[dict[str, Any]]:
        """Every run's config: the grid times the seeds (seed varies fastest)."""
        return [{**config, SEED_KEY: seed} for config in self.grid() for seed in self.seeds]

    def experiment_hash(self) -> str:
        """`config_hash` of the whole spec (the analysis folder ``runs/<name>/<hash>/``)."""
        return config_hash(self.to_dict())


def _folder(experiments_dir: str | Path | Traversable) -> Path | Traversable:
    return Path(experiments_dir) if isinstance(experiments_dir, str) else experiments_dir


def load_spec(
    name_or_path: str | Path, experiments_dir: str | Path | Traversable = EXPERIMENTS_DIR
) -> ExperimentSpec:
    """Load ``experiments_dir/<name>.yaml`` (or a path to a YAML file). Errors name the file."""
    if Path(name_or_path).suffix in (".yaml", ".yml"):
        path: Path | Traversable = Path(name_or_path)
    else:
        path = _folder(experiments_dir).joinpath(f"{name_or_path}.yaml")
        if not path.is_file():
            known = ", ".join(spec_names(experiments_dir)) or "none"
            raise ValueError(f"unknown experiment {str(name_or_path)!r}; known: {known}")
    stem = Path(path.name).stem
    try:
        spec = ExperimentSpec.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None
    if spec.name != stem:
        raise ValueError(f"{path}: name {spec.name!r} must equal the file name {stem!r}")
    return spec


def spec_names(experiments_dir: str | Path | Traversable = EXPERIMENTS_DIR) -> list[str]:
    """Names of the YAML specs in ``experiments_dir``, sorted."""
    folder = _folder(experiments_dir)
    if not folder.is_dir():
        return []
    return sorted(
        Path(entry.name).stem
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    )

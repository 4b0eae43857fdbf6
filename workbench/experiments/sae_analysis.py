"""The ``attention_saes`` analysis: an attention-output SAE per trained run (dense and sparse
attention on one task), compared on reconstruction, splicing and what their features read.

Each run gets an SAE of the ``sae`` options on layer ``layer`` (`workbench.sae.train_run_sae`,
harvested through the run's own method), saved in the run's ``saes/`` folder under a name holding
a hash of those options, so a second ``workbench run`` reuses it and other options add another.
The feature report (`workbench.sae.feature_report`) runs on ``report_examples`` held-out examples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from workbench.experiments.analyses import method_label
from workbench.experiments.base import (
    AnalysisOutput,
    Headline,
    RunRecord,
    analysis,
    analysis_options,
)
from workbench.experiments.spec import ExperimentSpec

DEFAULTS: dict[str, Any] = {
    "layer": 1,
    "sae": {"architecture": "topk", "expansion": 8, "k": 8, "steps": 1000},
    "examples": 4096,
    "eval_examples": 1024,
    "report_examples": 1024,
}
COMPARED = ("fvu", "l0", "loss_recovered", "spliced", "relevant_share", "after_relevant_share")


def sae_name(layer: int, options: Mapping[str, Any]) -> str:
    """``L<layer>-<architecture>-<hash of the SAE options>``."""
    text = json.dumps(
        {key: options[key] for key in ("sae", "examples", "eval_examples")}, sort_keys=True
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"L{layer}-{options['sae'].get('architecture', 'topk')}-{digest}"


@analysis("attention_saes")
def attention_saes_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Per run: the SAE's metrics (`workbench.sae.evaluation`) and feature summary; per method:
    their means. Figures: metrics side by side, the dedicated-feature counts per variable."""
    from workbench.sae import SAEConfig, feature_report, load_sae, subject, train_run_sae

    options = analysis_options(spec, DEFAULTS)
    config = SAEConfig.from_dict(dict(options["sae"]))
    layer, name = options["layer"], sae_name(options["layer"], options)
    rows = []
    for record in runs:
        folder = record.run.sae_folder(name)
        trained = (
            load_sae(folder, device=config.torch_device())
            if folder.exists()
            else train_run_sae(
                record.run,
                layer,
                config,
                name=name,
                examples=options["examples"],
                eval_examples=options["eval_examples"],
            )
        )
        found = subject(trained, examples=options["report_examples"])
        report = feature_report(trained.sae, found.model, found.source, layer, sparse=found.sparse)
        rows.append(_row(record, trained.metadata["metrics"], report.summary()))
    summary = _by_method(rows)
    return AnalysisOutput(
        results={"sae": name, "options": options, "runs": rows, "methods": summary},
        figures=_figures(summary),
        headline=_headline(summary, layer),
    )


def _row(
    record: RunRecord, metrics: Mapping[str, Any], summary: Mapping[str, Any]
) -> dict[str, Any]:
    row = {
        "config_hash": record.config_hash,
        "method": method_label(record.config),
        "seed": record.config.get("seed"),
        **{key: metrics[key] for key in ("fvu", "l0", "dead_fraction", "dense_fraction")},
        **{key: metrics[key] for key in ("loss_recovered", "kl", "clean", "spliced")},
        "alive": summary["alive"],
        "relevant_share": summary.get("relevant_share"),
        "after_relevant_share": summary.get("after_relevant_share"),
    }
    for entry in summary["variables"]:
        row[f"dedicated_{entry['variable']}"] = entry["dedicated"]
        row[f"values_{entry['variable']}"] = entry["values"]
    return row


def _by_method(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every number per method (in the order the methods first appear)."""
    summary = []
    for method in dict.fromkeys(row["method"] for row in rows):
        group = [row for row in rows if row["method"] == method]
        entry: dict[str, Any] = {"method": method, "runs": len(group)}
        for key, value in group[0].items():
            if isinstance(value, (int, float)) and key not in ("seed",):
                values = [row[key] for row in group if row.get(key) is not None]
                entry[key] = float(np.mean(values)) if values else None
        summary.append(entry)
    return summary


def _figures(summary: list[dict[str, Any]]) -> dict[str, Any]:
    from workbench.viz.sae import sae_comparison_figure

    rows = [{"name": row["method"], **row} for row in summary]
    return {
        "comparison": sae_comparison_figure(rows, COMPARED),
        "dedicated": sae_comparison_figure(
            rows, [f"dedicated_{name}" for name in _variables(summary)]
        ),
    }


def _variables(rows: list[dict[str, Any]]) -> list[str]:
    """The task variables counted in ``rows`` (their ``dedicated_<name>`` keys)."""
    prefix = "dedicated_"
    return sorted({key[len(prefix) :] for row in rows for key in row if key.startswith(prefix)})


def _headline(summary: list[dict[str, Any]], layer: int) -> Headline:
    variables = _variables(summary)
    columns = ["method", "FVU", "L0", "loss recovered", "accuracy clean -> spliced", "alive"]
    columns += [f"dedicated {' . '.join(variables)}", "share on relevant . after"]
    table = []
    for row in summary:
        dedicated = " . ".join(
            f"{row[f'dedicated_{name}']:g}/{row[f'values_{name}']:g}" for name in variables
        )
        shares = (row.get("relevant_share"), row.get("after_relevant_share"))
        table.append(
            [
                row["method"],
                f"{row['fvu']:.3f}",
                f"{row['l0']:.1f}",
                f"{row['loss_recovered']:.3f}",
                f"{row['clean']:.3f} -> {row['spliced']:.3f}",
                f"{row['alive']:.0f}",
                dedicated,
                "-" if None in shares else " . ".join(f"{share:.2f}" for share in shares),
            ]
        )
    return Headline(
        f"attention-output SAEs on layer {layer}: mean over seeds per method",
        columns,
        table,
        note="dedicated: values of the variable with a feature of F1 >= 0.8; share: of the "
        "features' source attribution, the part on the ground-truth relevant positions and on "
        "the positions right after them",
    )

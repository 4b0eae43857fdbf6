"""The interactive dashboard over a run store (Dash; the ``dashboard`` extra) and the static
report of the same figures.

* `create_app` / `serve` (`workbench.dashboard.app`): the Dash app, tabs Runs (the run index,
  training curves, the power-law fit of an experiment), Attention (a head's token-labelled
  pattern with the relevant keys and a sparse method's live selection; the layer x head grid of
  statistics), Methods (fidelity of several methods on one model, their layouts) and SAE
  features. ``workbench dashboard [RUNS_DIR]`` runs it.
* `write_report` (`workbench.dashboard.report`): the same figures as one self-contained HTML
  file (plotly.js inlined), ``workbench report RUN_DIR -o report.html``; needs plotly only.

Modules: `data` (what the tabs show, read through the run store and kept in memory), `panels`
(their figures, from the builders of `workbench.viz`; shared by the app and the report), one
module per tab (`runs_tab`, `attention_tab`, `methods_tab`, `sae_tab`: its layout and its
callbacks), `page`, `widgets`, `ids`. Dash is imported only by the app's modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve", "write_report"]


def __getattr__(name: str) -> Any:
    """`create_app` and `serve` import Dash on first use; `write_report` does not need it."""
    if name in ("create_app", "serve"):
        from workbench.dashboard import app

        return getattr(app, name)
    if name == "write_report":
        from workbench.dashboard.report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

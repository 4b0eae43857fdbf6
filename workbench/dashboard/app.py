"""The Dash app over a run store: `create_app` builds it, `serve` runs it on localhost.

Dash serves its JavaScript (plotly.js included) from the installed package: the page needs no
network. The server binds ``127.0.0.1`` unless told otherwise (the page reads the run folders of
whoever runs it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dash import Dash

from workbench.dashboard import page
from workbench.dashboard.data import Catalogue

LOCALHOST = "127.0.0.1"
TITLE = "sparse-attention workbench"


def create_app(
    root: str | Path = "runs",
    *,
    traces: Sequence[str | Path] = (),
    examples: int = 4,
    sae_examples: int = 256,
) -> Dash:
    """The dashboard over the runs under ``root`` (a `workbench.runs.RunStore` root, or a
    folder of results folders such as ``docs/results``): tabs Runs, Attention, Methods and SAE
    features. ``traces``: further trace files shown as attention sources; ``examples``: the
    evaluation examples a run's model is captured on; ``sae_examples``: the held-out examples
    of an SAE's feature report (`workbench.dashboard.data.Catalogue`)."""
    catalogue = Catalogue(root, traces=traces, examples=examples, sae_examples=sae_examples)
    app = Dash(__name__, title=TITLE, serve_locally=True, update_title=None)
    app.layout = lambda: page.layout(catalogue)
    page.register(app, catalogue)
    return app


def serve(
    root: str | Path = "runs",
    *,
    host: str = LOCALHOST,
    port: int = 8050,
    debug: bool = False,
    traces: Sequence[str | Path] = (),
    examples: int = 4,
    sae_examples: int = 256,
) -> None:
    """Run the dashboard of `create_app` at ``http://host:port`` until interrupted."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty str, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    app = create_app(root, traces=traces, examples=examples, sae_examples=sae_examples)
    app.run(host=host, port=port, debug=debug)

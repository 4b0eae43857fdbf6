"""Figures in notebooks that render everywhere: the interactive plotly bundle for Jupyter, and beside
it a static PNG for the viewers that do not run JavaScript (nbconvert HTML, GitHub, editors).

    import workbench.viz.notebook

    workbench.viz.notebook.setup()  # once, in a notebook's first cell

Afterwards every figure a cell shows (its last expression, ``figure.show()``) is displayed as one
output holding ``application/vnd.plotly.v1+json`` (Jupyter draws it interactively) and
``image/png`` (what static viewers show). The PNG comes from plotly's static export through
kaleido (>= 1), which drives a headless Chrome or Chromium: Debian's ``chromium`` package, found
on ``PATH`` or at ``$BROWSER_PATH``; nothing is downloaded.

Without an exporter (kaleido not installed, no browser found, or the browser failed) figures keep
the plotly bundle alone, plus a ``text/plain`` note saying why, which is what static viewers show
in the image's place; a warning says so once. `unavailable_reason` tells beforehand.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer, PlotlyRenderer

RENDERER = "workbench"
"""Name of the renderer `setup` registers and makes plotly's default."""
PLOTLY_MIME = "application/vnd.plotly.v1+json"
DEFAULT_WIDTH, DEFAULT_HEIGHT = 700, 500
"""Image size of figures whose layout sets none (plotly's own defaults)."""
EXPORT_TIMEOUT_S = 120.0
"""Longest wait for one image (a loaded machine starts the browser slowly)."""


def unavailable_reason() -> str | None:
    """Why figures would get no static image here (None when they would): kaleido >= 1 must be
    installed and find a Chrome/Chromium. Looks only; starts no browser."""
    if importlib.util.find_spec("kaleido") is None:
        return "kaleido is not installed (pip install 'sparse-attention-workbench[notebooks]')"
    version = importlib.metadata.version("kaleido")
    if int(version.split(".")[0]) < 1:
        return f"kaleido {version} is installed; the static export needs kaleido >= 1"
    from choreographer.browsers.chromium import Chromium

    browser = Chromium.find_browser(skip_local=False)  # $BROWSER_PATH first, then PATH
    if browser is None or not (os.path.isfile(browser) and os.access(browser, os.X_OK)):
        return (
            f"no Chrome/Chromium found for kaleido{f' at {browser!r}' if browser else ''} "
            "(install Debian's chromium package, or set BROWSER_PATH to a Chrome/Chromium "
            "executable)"
        )
    return None


def png_image(
    figure: dict[str, Any], *, width: int | None = None, height: int | None = None, scale: float = 1
) -> bytes:
    """The PNG of a figure dict (``go.Figure.to_dict()``), at its layout's size unless given
    (`DEFAULT_WIDTH` x `DEFAULT_HEIGHT` when it sets none). MathJax is off (no network): titles
    are plain text. Raises what kaleido raises (``ImportError``, ``ChromeNotFoundError``, ...)."""
    import kaleido

    layout = figure.get("layout", {})
    options = {
        "format": "png",
        "width": width or layout.get("width") or DEFAULT_WIDTH,
        "height": height or layout.get("height") or DEFAULT_HEIGHT,
        "scale": scale,
    }
    return kaleido.calc_fig_sync(
        figure, opts=options, kopts={"mathjax": False, "timeout": EXPORT_TIMEOUT_S}
    )


@dataclass
class _Exporter:
    """The PNG export shared by the renderer's copies (plotly copies a renderer for each figure):
    after one failure it is not tried again, so each later figure costs no browser start."""

    scale: float = 1.0
    failure: str | None = None
    warned: bool = field(default=False, repr=False)

    def png(self, figure: dict[str, Any]) -> bytes | None:
        if self.failure is None:
            try:
                return png_image(figure, scale=self.scale)
            except Exception as error:  # any failure leaves the figure interactive
                self.failure = unavailable_reason() or f"{type(error).__name__}: {error}"
        if not self.warned:
            warnings.warn(
                f"figures get no static image: {self.failure}", RuntimeWarning, stacklevel=2
            )
            self.warned = True
        return None


class StaticImageRenderer(MimetypeRenderer):
    """Plotly renderer of one output with the plotly bundle and a PNG of the same figure (or, when
    no PNG can be made, a plain-text note in its place)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.exporter = _Exporter(scale=scale)

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        bundle = PlotlyRenderer().to_mimebundle(fig_dict)
        png = self.exporter.png(fig_dict)
        if png is None:
            title = fig_dict.get("layout", {}).get("title", {})
            name = title.get("text") if isinstance(title, dict) else title
            bundle["text/plain"] = (
                f"[plotly figure{f' {name!r}' if name else ''}: open the notebook in Jupyter to "
                f"see it; no static image was made: {self.exporter.failure}]"
            )
        else:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle


def setup(scale: float = 1.0) -> None:
    """Register `StaticImageRenderer` as `RENDERER` and make it plotly's default renderer in this
    process (a notebook's kernel); ``scale`` multiplies the PNG's pixel size. Calling it again
    replaces the renderer (and forgets an earlier failure)."""
    pio.renderers[RENDERER] = StaticImageRenderer(scale=scale)
    pio.renderers.default = RENDERER

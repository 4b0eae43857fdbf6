"""Fixed styles of what the figures draw: sparse methods, toy tasks, layers and sweeps.

A method or a task has one colour in every figure, whatever the order of the traces and whatever
else the figure holds; a layer has one line dash. Every figure builder of `workbench.viz` takes its
colours from here.

    method_style("top_k(k=5)")            # the colour of top_k; "dense" is near-black
    series_style(method="dense", layer=1)  # dense's colour, layer 1's dash
    category_styles(["least_squares", "3-NN", ...])  # labels that are no method or task

Colours come from `PALETTE` (30 colours, from plotly's Dark24 and Alphabet; dense attention is
near-black).
The registered names (`workbench.sparse.names()`, `toy_tasks.names()`) are placed by a stable hash
of the name (blake2b, not Python's salted ``hash``) and linear probing, in sorted order, so two
registered methods never share a colour and adding a method moves at most the few whose slot it
takes. A name that is not registered takes a slot no registered name holds (while one is free).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PALETTE: tuple[str, ...] = (
    "#2E91E5",
    "#E15F99",
    "#1CA71C",
    "#FB0D0D",
    "#DA16FF",
    "#B68100",
    "#750D86",
    "#EB663B",
    "#511CFB",
    "#00A08B",
    "#FB00D1",
    "#B2828D",
    "#6C7C32",
    "#778AAE",
    "#862A16",
    "#A777F1",
    "#620042",
    "#1616A7",
    "#6C4516",
    "#AF0038",
    "#17BECF",
    "#8DB600",
    "#85660D",
    "#1C8356",
    "#FEAF16",
    "#325A9B",
    "#C4451C",
    "#B10DA1",
    "#1CBE4F",
    "#C075A6",
)
"""Qualitative colours: plotly's Dark24 less its near-black ``#222A2A`` (kept for dense) and three
near-duplicates (``#FC0080``, ``#DA60CA``, ``#0D2A63``), plus a cyan and a lime, and eight of
plotly's Alphabet (no light or grey ones): more slots than registered methods, so that a name
outside the registry still gets a colour of its own."""

DENSE = "dense"
"""The label of dense attention (no sparse method)."""
DENSE_COLOUR = "#222A2A"
NEUTRAL_COLOUR = "#7F7F7F"
"""Colour of what has no method or task (references, thresholds)."""
RELEVANT_COLOUR = "#D62728"
"""Colour of the ground-truth relevant positions of a toy task (frames around them)."""

DASHES: tuple[str, ...] = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line dash of layer 0, 1, ... (cycled)."""
SYMBOLS: tuple[str, ...] = (
    "circle",
    "square",
    "diamond",
    "triangle-up",
    "cross",
    "x",
    "star",
    "pentagon",
    "hexagon",
    "triangle-down",
    "triangle-left",
    "triangle-right",
    "hexagram",
    "star-square",
    "hourglass",
    "bowtie",
)
"""Marker symbols, for tasks drawn beside methods (and for categories past the palette)."""


@dataclass(frozen=True)
class Style:
    """How one series is drawn: line colour and dash, marker symbol."""

    colour: str
    dash: str = "solid"
    symbol: str = "circle"

    def line(self, **extra: Any) -> dict[str, Any]:
        """``go.Scatter(line=...)``."""
        return {"color": self.colour, "dash": self.dash, **extra}

    def marker(self, **extra: Any) -> dict[str, Any]:
        """``go.Scatter(marker=...)``."""
        return {"color": self.colour, "symbol": self.symbol, **extra}

    def replace(self, **changes: Any) -> Style:
        return dataclasses.replace(self, **changes)

    def for_layer(self, layer: int) -> Style:
        """The same colour and symbol with layer ``layer``'s dash."""
        return self.replace(dash=layer_dash(layer))


def stable_hash(name: str) -> int:
    """A hash of ``name`` that is the same in every process (Python's ``hash`` of a str is not)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big")


def assign_slots(names: Iterable[str], slots: int, *, taken: Iterable[int] = ()) -> dict[str, int]:
    """``{name: slot}`` with distinct slots in ``range(slots)`` (while there are enough): each
    name, in sorted order, starts at ``stable_hash(name) % slots`` and takes the next slot that
    is neither ``taken`` nor given to an earlier name. Depends on the set of names only."""
    used = set(taken)
    placed: dict[str, int] = {}
    for name in sorted(set(names)):
        start = stable_hash(name) % slots
        free = [(start + step) % slots for step in range(slots)]
        free = [slot for slot in free if slot not in used]
        placed[name] = free[0] if free else start
        used.add(placed[name])
    return placed


def base_name(label: str) -> str:
    """The method or task name of a label such as ``"top_k(k=5)"`` or ``"assoc_recall(n=8)"``."""
    return label.split("(", 1)[0].strip()


@functools.lru_cache(maxsize=16)
def _slots(registered: tuple[str, ...]) -> dict[str, int]:
    return assign_slots(registered, len(PALETTE))


def _colour(name: str, registered: Sequence[str]) -> str:
    slots = _slots(tuple(registered))
    if name not in slots:
        slot = assign_slots([name], len(PALETTE), taken=slots.values())[name]
    else:
        slot = slots[name]
    return PALETTE[slot]


def registered_methods() -> list[str]:
    """The sparse methods of the registry (`workbench.sparse.names()`)."""
    import workbench.sparse

    return workbench.sparse.names()


def registered_tasks() -> list[str]:
    """The toy tasks of the registry (`toy_tasks.names()`)."""
    import toy_tasks

    return toy_tasks.names()


def method_colour(label: str) -> str:
    """The colour of a method: ``"dense"`` -> `DENSE_COLOUR`; a registered method (or a label of
    one, ``"top_k(k=5)"``) -> its palette slot; any other name -> a slot of its own hash."""
    name = base_name(label)
    return DENSE_COLOUR if name == DENSE else _colour(name, registered_methods())


def task_colour(label: str) -> str:
    """The colour of a toy task (or of a label such as ``"assoc_recall(seq_len=64)"``)."""
    return _colour(base_name(label), registered_tasks())


def task_symbol(label: str) -> str:
    """The marker symbol of a toy task (distinct among the registered tasks)."""
    name = base_name(label)
    slots = assign_slots(registered_tasks(), len(SYMBOLS))
    slot = slots.get(name)
    if slot is None:
        slot = assign_slots([name], len(SYMBOLS), taken=slots.values())[name]
    return SYMBOLS[slot]


def layer_dash(layer: int) -> str:
    """The line dash of layer ``layer`` (0: solid, 1: dash, ...)."""
    return DASHES[layer % len(DASHES)]


def method_style(label: str) -> Style:
    return Style(colour=method_colour(label))


def task_style(label: str) -> Style:
    return Style(colour=task_colour(label), symbol=task_symbol(label))


def series_style(
    *, method: str | None = None, task: str | None = None, layer: int | None = None
) -> Style:
    """The style of a curve of ``method`` on ``task`` in ``layer`` (each optional): the method's
    colour (the task's where no method is given), the task's symbol when a method gives the
    colour, the layer's dash."""
    if method is not None:
        style = method_style(method)
        if task is not None:
            style = style.replace(symbol=task_symbol(task))
    elif task is not None:
        style = task_style(task)
    else:
        style = Style(colour=NEUTRAL_COLOUR)
    return style if layer is None else style.for_layer(layer)


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key that orders the numbers inside labels by value (``"T=8"`` before ``"T=16"``)."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", label)
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(parts))


def category_styles(labels: Iterable[str]) -> dict[str, Style]:
    """Styles of labels that are no method or task (sweep points, baselines): the i-th label in
    natural order takes the i-th palette colour, past the palette the next dash and symbol.
    Depends on the set of labels only, not on their order."""
    ordered = sorted(set(labels), key=natural_key)
    size = len(PALETTE)
    return {
        label: Style(
            colour=PALETTE[index % size],
            dash=DASHES[(index // size) % len(DASHES)],
            symbol=SYMBOLS[(index // size) % len(SYMBOLS)],
        )
        for index, label in enumerate(ordered)
    }


def shade(colour: str, lightness: float) -> str:
    """``colour`` (``#rrggbb``) mixed with white: ``lightness`` 0 keeps it, 1 gives white."""
    if not 0 <= lightness <= 1:
        raise ValueError(f"lightness must be in [0, 1], got {lightness}")
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    mixed = (round(value + (255 - value) * lightness) for value in (red, green, blue))
    return "#{:02X}{:02X}{:02X}".format(*mixed)


LIGHTEST = 0.5
"""Lightness of the lightest shade of a sweep (`sweep_styles`)."""


def sweep_styles(
    points: Sequence[Mapping[str, Hashable]],
    shade_by: str,
    *,
    label: Callable[[Mapping[str, Hashable]], str] | None = None,
) -> list[Style]:
    """Styles of the points of a sweep (``[{covariate: value}]``, e.g. ``{"T": 8, "B": 1}``):
    one hue per combination of the covariates other than ``shade_by`` (`category_styles` of
    their labels), shaded by the rank of ``shade_by`` (lightest for the smallest value, the full
    colour for the largest). The same points give the same styles in every figure."""

    def others(point: Mapping[str, Hashable]) -> str:
        if label is not None:
            return label(point)
        return ", ".join(f"{name}={point[name]}" for name in point if name != shade_by)

    hues = category_styles(others(point) for point in points)
    values = sorted(
        {point[shade_by] for point in points}, key=lambda value: natural_key(str(value))
    )
    styles = []
    for point in points:
        hue = hues[others(point)]
        rank = values.index(point[shade_by])
        lightness = LIGHTEST * (1 - rank / (len(values) - 1)) if len(values) > 1 else 0.0
        styles.append(hue.replace(colour=shade(hue.colour, lightness)))
    return styles


def rgba(colour: str, alpha: float) -> str:
    """``colour`` (``#rrggbb``) as ``rgba(r, g, b, alpha)`` (bands, fills)."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"

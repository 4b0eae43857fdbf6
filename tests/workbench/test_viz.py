"""The fixed styles of `workbench.viz.style` and the experiment figure builders that use them."""

import math

import numpy as np
import pytest

import toy_tasks
import workbench.sparse
from workbench.viz import style
from workbench.viz.experiments import (
    BOUND_SYMBOL,
    TABLE_CHARACTER_WIDTH,
    Level,
    Mark,
    curves_figure,
    power_law_figure,
    table_figure,
)
from workbench.viz.stability import stability_figures


def line_colours(figure, name):
    """The line colours of the traces named ``name``."""
    return {trace.line.color for trace in figure.data if trace.name == name}


def test_registered_methods_and_tasks_have_distinct_styles():
    methods = ["dense", *workbench.sparse.names()]
    colours = [style.method_colour(name) for name in methods]
    assert len(set(colours)) == len(methods) > 10  # more than plotly's 10 default colours
    assert style.method_colour("dense") == style.DENSE_COLOUR
    tasks = toy_tasks.names()
    assert len({style.task_colour(name) for name in tasks}) == len(tasks)
    assert len({style.task_symbol(name) for name in tasks}) == len(tasks)
    assert len(style.PALETTE) == len(set(style.PALETTE)) >= 20
    assert style.DENSE_COLOUR not in style.PALETTE


def test_styles_are_fixed_by_the_name():
    assert style.method_colour("top_k(k=5)") == style.method_colour("top_k")
    assert style.task_colour("assoc_recall(seq_len=64)") == style.task_colour("assoc_recall")
    # Python's str hash changes from one process to the next; the palette slot must not.
    assert style.stable_hash("top_k") == 16821996039927610072
    # A name outside the registry keeps off the registered methods' colours.
    registered = {style.method_colour(name) for name in workbench.sparse.names()}
    assert style.method_colour("least_squares") not in registered
    assert style.series_style(method="top_p", layer=1) == style.Style(
        style.method_colour("top_p"), dash="dash"
    )
    assert style.series_style(task="joint_recall").colour == style.task_colour("joint_recall")
    assert style.layer_dash(0) == "solid" and style.layer_dash(1) != "solid"


def test_assign_slots_depends_on_the_set_of_names_only():
    names = [f"method_{i}" for i in range(12)]
    slots = style.assign_slots(names, 22)
    assert slots == style.assign_slots(list(reversed(names)), 22)
    assert len(set(slots.values())) == len(names)
    assert style.assign_slots(["x"], 22, taken=range(21)) == {"x": 21}


def test_category_styles_are_order_free_and_distinct_past_the_palette():
    labels = [f"T={t} B={b}" for t in (8, 16, 32, 64, 128, 256) for b in (1, 2, 4, 8)]
    styles = style.category_styles(labels)
    assert styles == style.category_styles(reversed(labels))
    assert len({(s.colour, s.dash) for s in styles.values()}) == len(labels) == 24
    assert styles["T=8 B=1"].colour == style.PALETTE[0]  # natural order: 8 before 16


def test_sweep_styles_hue_by_the_other_covariates_and_shade_by_one():
    points = [{"T": t, "B": b} for t in (8, 16, 32) for b in (1, 2)]
    keys = [(point["T"], point["B"]) for point in points]
    styles = dict(zip(keys, style.sweep_styles(points, "T"), strict=True))
    assert styles[(32, 1)].colour == style.category_styles(["B=1", "B=2"])["B=1"].colour
    assert styles[(32, 1)].colour != styles[(32, 2)].colour

    def lightness(colour):
        return sum(int(colour[i : i + 2], 16) for i in (1, 3, 5))

    assert lightness(styles[(8, 1)].colour) > lightness(styles[(16, 1)].colour)
    assert lightness(styles[(16, 1)].colour) > lightness(styles[(32, 1)].colour)
    assert style.shade("#000000", 0.5) == "#808080" and style.shade("#123456", 0) == "#123456"


def curves(labels, n=5):
    return {label: (np.arange(n), np.linspace(0, 1, n) * (i + 1)) for i, label in enumerate(labels)}


def test_a_method_has_one_colour_in_every_figure_whatever_the_order():
    methods = ["dense", *workbench.sparse.names()]
    styles = {name: style.method_style(name) for name in methods}
    accuracy = curves_figure(curves(methods), styles=styles, title="accuracy")
    loss = curves_figure(curves(list(reversed(methods))[:4]), styles=styles, title="loss")
    for name in ("dense", "top_k"):
        assert line_colours(accuracy, name) == {style.method_colour(name)}
    assert line_colours(loss, "xattention") == line_colours(accuracy, "xattention")
    assert len({trace.line.color for trace in accuracy.data}) == len(methods)
    # Without styles, groups take category styles, fixed by the set of groups, not their order.
    first = curves_figure(curves(["b", "a", "c"]), title="")
    second = curves_figure(curves(["c", "a", "b"]), title="")
    assert line_colours(first, "a") == line_colours(second, "a")


def test_curves_figure_groups_panels_levels_and_marks():
    labels = ["run-1", "run-2", "run-3"]
    groups = {"run-1": "dense", "run-2": "dense", "run-3": "top_k"}
    panels = {"run-1": "assoc_recall", "run-2": "joint_recall", "run-3": "joint_recall"}
    styles = {name: style.method_style(name) for name in ("dense", "top_k")}
    figure = curves_figure(
        curves(labels),
        groups=groups,
        styles=styles,
        panels=panels,
        title="accuracy",
        levels=[Level(0.5, "50%"), Level(0.05, "5%: at chance", panel="joint_recall")],
        marks=[
            Mark("run-1", 2.0, 0.5, "dense: 50% at 2", "reached"),
            Mark("run-3", 4.0, 0.9, "not yet", "not reached", bound=True),
        ],
    )
    assert [a.text for a in figure.layout.annotations] == ["assoc_recall", "joint_recall"]
    dense = [trace for trace in figure.data if trace.name == "dense"]
    assert {trace.xaxis for trace in dense} == {"x", "x2"}
    assert [trace.showlegend for trace in dense] == [True, False]  # one legend entry
    fifty = [trace for trace in figure.data if trace.name == "50%"]
    assert len(fifty) == 2 and [list(trace.y) for trace in fifty] == [[0.5, 0.5]] * 2
    chance = [trace for trace in figure.data if trace.name == "5%: at chance"]
    assert [trace.xaxis for trace in chance] == ["x2"]
    reached = next(trace for trace in figure.data if trace.name == "reached")
    assert list(reached.marker.color) == [style.method_colour("dense")]
    bound = next(trace for trace in figure.data if trace.name == "not reached")
    assert bound.marker.symbol == BOUND_SYMBOL and bound.xaxis == "x2"
    with pytest.raises(KeyError, match="unknown curve"):
        curves_figure(curves(labels), title="", marks=[Mark("other", 1, 1, "", "k")])


def test_a_level_of_one_curve_follows_it():
    figure = curves_figure(
        curves(["a", "b"]), title="", levels=[Level(0.3, "threshold", curve="b")], log_x=True
    )
    (level,) = [trace for trace in figure.data if trace.name == "threshold"]
    assert level.line.color == line_colours(figure, "b").pop() and level.line.dash == "dot"
    assert list(level.x) == [1.0, 4.0]  # the curve's steps (x = 0 left out on a log axis)


def test_power_law_figure_draws_the_interval_and_the_reference_slope():
    t = np.array([8.0, 16, 32, 8, 16, 32])
    b = np.array([1.0, 1, 1, 2, 2, 2])
    fitted = 3 * t**0.6 / b**0.5
    observed = fitted * np.array([1.1, 0.9, 1.0, 1.05, 0.95, 1.0])

    def interval(x):
        value = 3 * np.asarray(x["T"]) ** 0.6 / np.asarray(x["B"]) ** 0.5
        return value / 1.2, value * 1.2

    figure = power_law_figure(
        {"T": t, "B": b},
        observed.tolist(),
        fitted.tolist(),
        formula="3 T^0.6 B^-0.5",
        x_name="T",
        interval=interval,
        reference_exponent=0.8,
        reference_name="paper (transformer)",
    )
    bands = [trace for trace in figure.data if trace.fill == "tonexty"]
    assert len(bands) == 2 and [trace.showlegend for trace in bands] == [True, False]
    assert bands[0].name == "fit, 95% interval"
    slopes = [trace for trace in figure.data if (trace.name or "").startswith("paper")]
    assert len(slopes) == 2 and slopes[0].name == "paper (transformer): slope T^0.80"
    fits = [trace for trace in figure.data if (trace.name or "").startswith("fit, B=")]
    assert [trace.line.color for trace in fits] == [slope.line.color for slope in slopes]
    assert fits[0].line.color != fits[1].line.color
    for slope, fit in zip(slopes, fits, strict=True):
        assert slope.line.dash == "dash"
        (x0, x1), (y0, y1) = slope.x, slope.y
        assert math.log(y1 / y0) / math.log(x1 / x0) == pytest.approx(0.8)
        # Through the fit at the geometric centre of the line's T range: T = 16.
        assert list(fit.x) == [8.0, 16.0, 32.0]
        assert y0 * (16 / x0) ** 0.8 == pytest.approx(fit.y[1])


def test_table_columns_are_as_wide_as_their_headers():
    rows = [
        {"task": "assoc_recall", "median_steps_to_0.05": None, "mean_eval_accuracy_train": 0.5},
        {"task": "joint_recall", "median_steps_to_0.05": 12.0, "mean_eval_accuracy_train": 0.25},
    ]
    headers = {"median_steps_to_0.05": "steps to 5% accuracy (median)"}
    figure = table_figure(rows, title="summary", headers=headers)
    table = figure.data[0]
    header = [text.split("<br>") for text in table.header["values"]]
    assert header[1] == ["steps to 5%", "accuracy", "(median)"]
    assert header[2] == ["mean eval", "accuracy train"]  # underscores read as spaces
    for lines, cells, width in zip(header, table.cells["values"], table.columnwidth, strict=True):
        longest = max(len(text) for text in [*lines, *cells])
        assert width >= TABLE_CHARACTER_WIDTH * longest
    assert list(table.cells["values"][1]) == ["–", "12.000"]
    assert figure.layout.width >= sum(table.columnwidth)
    assert table.header["height"] >= 3 * 18  # three header lines


def test_stability_figures_colour_by_method_and_dash_by_layer():
    def records(value):
        return [
            {"step": step, "stability": {"jacobian_norm": [[value], [value / 2]]}}
            for step in (0, 10, 20)
        ]

    runs = {"a": records(0.1), "b": records(0.2), "c": records(0.3)}
    groups = {"a": "dense", "b": "top_k(k=5)", "c": "dense"}
    figures = stability_figures(runs, groups, panels={"a": "assoc", "b": "assoc", "c": "joint"})
    figure = figures["stability_jacobian_norm"]
    assert line_colours(figure, "top_k(k=5) layer 1") == {style.method_colour("top_k")}
    dense = [trace for trace in figure.data if trace.name == "dense layer 1"]
    assert {trace.line.dash for trace in dense} == {style.layer_dash(1)}
    assert {trace.xaxis for trace in dense} == {"x", "x2"}


def test_fidelity_and_methods_figures_use_the_methods_colours():
    from workbench.viz.fidelity import fidelity_figure
    from workbench.viz.methods import methods_figure

    reports = [
        {
            "method": name,
            "mean_density": 0.5,
            "mean_recall": 0.9,
            "mean_local_output_error": 0.1,
            "output_error": 0.2,
        }
        for name in ("top_k", "sink_window")
    ]
    fidelity = fidelity_figure(reports)
    colours = [style.method_colour("top_k"), style.method_colour("sink_window")]
    assert [list(trace.marker.color) for trace in fidelity.data] == [colours] * 3
    assert fidelity.data[1].marker.pattern.shape == "/"  # local bars hatched
    assert list(fidelity.data[0].text) == ["top_k, sink_window", ""]  # one label, not two drawn
    apart = fidelity_figure([reports[0], {**reports[1], "mean_density": 1.0, "mean_recall": 1.0}])
    assert list(apart.data[0].text) == ["top_k", "sink_window"]
    assert list(apart.data[0].textposition) == ["top center", "top left"]  # inside the plot
    methods = [workbench.sparse.get("sink_window", window=8), workbench.sparse.get("top_k", k=3)]
    gallery = methods_figure(methods, q_len=48, block_size=16)
    assert [trace.colorscale[-1][1] for trace in gallery.data] == colours[::-1]
    accuracy = curves_figure(
        curves(["top_k"]), styles={"top_k": style.method_style("top_k")}, title=""
    )
    assert line_colours(accuracy, "top_k") == {colours[0]}


def test_task_baseline_curves_take_distinct_colours_past_ten():
    from workbench.viz.tasks import curves_figure as task_curves

    figure = task_curves(
        {f"baseline {i}": [1.0, 0.5] for i in range(12)}, title="", x_title="", y_title=""
    )
    assert len({trace.line.color for trace in figure.data}) == 12


def test_attention_figure_pools_long_patterns_and_draws_a_window_at_full_resolution():
    import torch

    from workbench.viz.attention import Window, attention_figure, pool

    weights = torch.softmax(torch.randn(300, 300, generator=torch.Generator().manual_seed(0)), -1)
    kept = torch.rand(300, 300, generator=torch.Generator().manual_seed(1)) < 0.25
    relevant = torch.zeros(300, 300, dtype=torch.bool)
    relevant[torch.arange(300), torch.arange(300) // 2] = True
    figure = attention_figure(weights, relevant=relevant, kept=kept, method="top_k(k=4)")
    heat, selection = figure.data[:2]
    assert np.asarray(heat.z).shape == (75, 75) and "pooled 4x4" in figure.layout.title.text
    assert np.asarray(heat.z).max() == pytest.approx(weights.max().item())  # the max of a block
    assert 0 < np.asarray(selection.z).mean() < 1  # kept fractions
    assert selection.colorscale[-1][1] == style.rgba(style.method_colour("top_k"), 0.55)
    assert figure.data[-1].name == "relevant keys (ground truth)" and len(figure.layout.shapes) > 0
    zoomed = attention_figure(weights, kept=kept, method="top_k", window=Window(10, 50, 0, 40))
    assert np.asarray(zoomed.data[0].z).shape == (40, 40)
    assert list(zoomed.layout.xaxis.range) == [-0.5, 39.5]
    assert "pooled" not in zoomed.layout.title.text
    assert pool(torch.ones(3, 5), 2, "mean").tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_attention_figure_names_its_bad_arguments():
    import torch

    from workbench.viz.attention import Window, attention_figure, pool

    weights = torch.rand(4, 6)
    with pytest.raises(ValueError, match="pattern must be"):
        attention_figure(torch.rand(6))
    with pytest.raises(ValueError, match="tokens has 2 entries"):
        attention_figure(weights, tokens=["a", "b"])
    with pytest.raises(ValueError, match="kept must be"):
        attention_figure(weights, kept=torch.ones(4, 4, dtype=torch.bool), method="top_k")
    with pytest.raises(ValueError, match="method"):
        attention_figure(weights, kept=torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_side"):
        attention_figure(weights, max_side=0)
    with pytest.raises(ValueError, match=r"pattern must be a torch\.Tensor"):
        attention_figure(weights.tolist())
    with pytest.raises(ValueError, match=r"relevant must be a torch\.Tensor"):
        attention_figure(weights, relevant=[[True] * 6] * 4)
    with pytest.raises(ValueError, match="tokens must be a sequence"):
        attention_figure(weights, tokens="abcdef")
    with pytest.raises(ValueError, match="queries must be in"):
        attention_figure(weights, queries=[0, 1, 2, -1])
    with pytest.raises(ValueError, match="window must be a Window"):
        attention_figure(weights, window=(0, 2, 0, 2))
    with pytest.raises(ValueError, match="factor"):
        pool(weights, 0)
    with pytest.raises(ValueError, match="values must be"):
        pool(torch.rand(2, 3, 4), 2)
    with pytest.raises(ValueError, match="kv_len"):
        Window.from_ranges([0, 1], [0, 1], 4, 0)
    with pytest.raises(ValueError, match="y_range"):
        Window.from_ranges([0, 1], None, 4, 4)


def test_grid_cells_read_back_from_the_trace_figures_labels():
    from workbench.viz.trace import grid_cell, head_label, layer_label

    assert grid_cell(head_label(3), layer_label(1)) == (1, 3)
    with pytest.raises(ValueError, match="not a cell"):
        grid_cell("head x", "layer 0")

"""`bench/targets.py`: the targets table reads the ratios a results file recorded and marks a
target met only when a file meets it (and its further condition)."""

import pytest

from bench.targets import TARGETS, figure, markdown, rows


def _entry(n: int, random_over_ideal: float, bracket: float, exact_fraction: float) -> dict:
    layout = {"ours": {"fwd_ms": 1.0, "fwd_ms_over_ideal": random_over_ideal}}
    return {
        "n": n,
        "sdpa_causal": {"fwd_ms": 2.0},
        "layouts": {"random_10pct": layout},
        "row_stats": {
            "statistics_only_over_sdpa_fwd": 0.9,
            "bracket": {
                "over_sdpa_fwd": bracket,
                "closed_fraction": 0.5,
                "estimate_exact_fraction": exact_fraction,
            },
        },
    }


def _results(loads: str, *entries: dict) -> dict:
    return {
        "device": "GPU",
        "torch": "2",
        "triton": "3",
        "date": "2026-12-07",
        "variant": {"loads": loads, "grid": "tiles"},
        "lengths": list(entries),
    }


def test_a_target_is_met_when_any_file_meets_it_at_that_length(tmp_path):
    files = [
        (tmp_path / "a.json", _results("pointers", _entry(64, 1.40, 3.0, 0.95))),
        (tmp_path / "b.json", _results("descriptors", _entry(64, 1.10, 5.0, 0.95))),
    ]
    table = {name: (reached, met) for name, reached, met in rows(files, 64)}
    reached, met = table["10%-random forward <= 1.15x ideal"]
    assert met
    assert reached == ["1.40x pointers/tiles (a.json)", "1.10x descriptors/tiles (b.json)"]
    assert table["row statistics alone <= 1.1x SDPA forward"][1]
    # targets no file measured (dense, FlexAttention, exact budgets) are left out
    assert len(table) == 3
    assert rows(files, 128) == []


@pytest.mark.parametrize("exact_fraction, met", [(0.95, True), (0.85, False)])
def test_bracket_target_needs_enough_exact_budgets(tmp_path, exact_fraction, met):
    files = [(tmp_path / "a.json", _results("auto", _entry(64, 1.0, 3.5, exact_fraction)))]
    bracket = next(r for r in rows(files, 64) if r[0].startswith("bracket"))
    assert bracket[2] is met
    assert "closed 50%" in bracket[1][0]


def test_dense_ratio_is_ours_over_sdpa_in_the_same_entry(tmp_path):
    entry = _entry(64, 1.0, 3.0, 0.95)
    entry["layouts"]["causal_dense"] = {"ours": {"fwd_ms": 2.3}}
    dense = next(t for t in TARGETS if t.name.startswith("dense"))
    assert dense.read(entry) == pytest.approx(1.15)
    assert not dense.met(1.15, entry)
    text = markdown([(tmp_path / "a.json", _results("auto", entry))], 64)
    assert "| dense causal forward <= 1.10x SDPA | 1.15x auto/tiles (a.json) | no |" in text


def test_markdown_needs_a_file():
    with pytest.raises(ValueError, match="files"):
        markdown([], 64)


def test_figure_puts_every_bound_at_one_and_fills_the_met_markers(tmp_path):
    """One trace per file; an at-most target's marker at its number over the bound, an at-least
    one's at the bound over its number (so left of 1 is within either way); filled where met."""
    entry = _entry(64, 1.40, 3.5, 0.85)  # 10%-random missed, bracket time within but inexact
    entry["layouts"]["random_10pct"]["speedup_vs_flex_fwd"] = 1.5  # >= 1.2: met
    files = [
        (tmp_path / "a.json", _results("pointers", entry)),
        (tmp_path / "b.json", _results("descriptors", _entry(64, 1.10, 3.0, 0.95))),
    ]
    chart = figure(files, 64)
    assert [trace.name for trace in chart.data] == [
        "descriptors/tiles (b.json)",
        "pointers/tiles (a.json)",
    ]
    trace = chart.data[1]
    pointers = dict(zip(trace.y, zip(trace.x, trace.marker.symbol, strict=True), strict=True))
    assert pointers["10%-random forward <= 1.15x ideal"] == (
        pytest.approx(1.40 / 1.15),
        "circle-open",
    )
    assert pointers[">= 1.2x FlexAttention, random_10pct fwd"] == (
        pytest.approx(1.2 / 1.5),
        "circle",
    )
    bracket = pointers["bracket budgets <= 4x SDPA forward (>= 90% of (row, p) exact)"]
    assert bracket == (pytest.approx(3.5 / 4.0), "circle-open")  # within the bound, not met
    assert list(chart.layout.yaxis.categoryarray) == [name for name, _, _ in rows(files, 64)]

"""`bench/bracket_model.py`: its float64 model of the bracket pass gives the budgets the Triton
kernel gives (interpreter), so its accuracy figures at long lengths stand for the kernel's."""

import math

import pytest
import torch

from bench.bracket_model import PS, Placement, accuracy, bracket_budgets, row_log2_probs
from kernels.triton import row_stats


def test_model_gives_the_kernels_bracket_budgets():
    generator = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 160, 32, generator=generator) for _ in range(2))
    k[:, :, :3] *= 4.0  # a few heavy keys, as in the benchmark's inputs
    out = row_stats.row_stats(q, k, causal=True, ps=PS, budgets="bracket")
    got = torch.stack([out.top_p_budget_low, out.top_p_budget_high, out.top_p_budget], dim=-1)
    got = got.reshape(2, 160, len(PS), 3)
    same = total = 0
    for head in range(2):
        for row in range(160):
            u = row_log2_probs(q[0].double(), k[0].double(), head, row)
            model = torch.tensor(bracket_budgets(u), dtype=torch.int32)
            same += int((model == got[head, row]).all(-1).sum())
            total += len(PS)
    # fp32 scores in the kernel against float64 here: a key within rounding of a candidate
    # may fall on the other side, so a few (row, p) may differ
    assert same / total >= 0.98


def test_accuracy_counts_closed_and_exact_fractions():
    (result,) = accuracy("structured", 256, 40, [Placement((0.5,), (0.0,))])
    assert 0.0 <= result["closed"] <= result["estimate_exact"] <= 1.0
    assert set(result["closed_per_p"]) == {str(p) for p in PS}
    assert math.isclose(
        result["closed"], sum(result["closed_per_p"].values()) / len(PS), rel_tol=1e-12
    )


@pytest.mark.parametrize("text", ["0.5,0.2", "1.5;0.0", "0.5;x"])
def test_placement_rejects_bad_text(text):
    with pytest.raises(ValueError, match="placement"):
        Placement.parse(text)

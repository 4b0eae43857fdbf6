"""Triton's CPU interpreter computes ``tl.dot`` of bfloat16 tiles wrongly (an upstream limitation):
with ``TRITON_INTERPRET=1`` an explicit ``impl="triton"`` on bfloat16 inputs raises instead of
returning garbage, and ``impl="auto"`` runs the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import api
from kernels.layout import Layout


def bf16(seed: int, length: int = 32) -> torch.Tensor:
    """``[1, 1, length, 16]`` bfloat16."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, length, 16, generator=generator).bfloat16()


@pytest.fixture(autouse=True)
def interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not api.triton_importable():
        pytest.skip("triton is not installed")


def test_sparse_attention_refuses_bf16_in_the_interpreter() -> None:
    q, k, v = bf16(0), bf16(1), bf16(2)
    layout = Layout.dense(32, 32, block_q=16, block_k=16)
    with pytest.raises(RuntimeError, match=r"sparse_attention\(impl='triton'\).*bfloat16"):
        api.sparse_attention(q, k, v, layout, impl="triton")
    auto = api.sparse_attention(q, k, v, layout, impl="auto")
    assert torch.equal(auto, api.sparse_attention(q, k, v, layout, impl="reference"))


def test_row_stats_and_block_scores_refuse_bf16_in_the_interpreter() -> None:
    q, k = bf16(0), bf16(1)
    with pytest.raises(RuntimeError, match=r"row_stats\(impl='triton'\).*bfloat16"):
        api.row_stats(q, k, impl="triton")
    with pytest.raises(RuntimeError, match=r"block_scores\(impl='triton'\).*bfloat16"):
        api.block_scores(q, k, block_q=16, block_k=16, impl="triton")


def test_kernel_entry_points_refuse_bf16_in_the_interpreter() -> None:
    from kernels.triton import block_scores, block_sparse_attention, row_stats

    q, k, v = bf16(0), bf16(1), bf16(2)
    layout = Layout.dense(32, 32, block_q=16, block_k=16)
    with pytest.raises(ValueError, match=r"bfloat16.*interpreter"):
        block_sparse_attention.forward(q, k, v, layout, 0.25)
    with pytest.raises(ValueError, match=r"bfloat16.*interpreter"):
        row_stats.row_stats(q, k)
    with pytest.raises(ValueError, match=r"bfloat16.*interpreter"):
        block_scores.mean_pooled_block_scores(q, k, block_q=16, block_k=16, scale=0.25)


def test_float16_still_runs_in_the_interpreter() -> None:
    q, k, v = (bf16(seed).half() for seed in range(3))
    layout = Layout.dense(32, 32, block_q=16, block_k=16)
    out = api.sparse_attention(q, k, v, layout, impl="triton")
    expected = api.sparse_attention(q, k, v, layout, impl="reference")
    torch.testing.assert_close(out, expected, atol=3e-3, rtol=3e-3)

"""Delta attention and the Re-ttention-style rescaling against dense attention."""

import pytest
import torch

import workbench.sparse as sparse
from kernels import api
from kernels.layout import Layout
from workbench.sparse.corrections import delta_rows


def make_qkv(q_len, kv_len, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, q_len, 16, generator=generator)
    k = torch.randn(2, 2, kv_len, 16, generator=generator)
    v = torch.randn(2, 2, kv_len, 16, generator=generator)
    return q, k, v


def run(method, q, k, v, causal):
    layout = method.select(q, k, causal=causal, block_size=16)
    out_sparse = api.sparse_attention(q, k, v, layout, impl="reference")
    dense_layout = Layout.dense(q.shape[2], k.shape[2], causal=causal)
    dense = api.sparse_attention(q, k, v, dense_layout, impl="reference")
    return layout, out_sparse, dense


def test_delta_rows_follow_the_paper():
    anchors, cut = delta_rows(300, 64, 128)
    assert cut == 300 % 64 + 128
    assert anchors.tolist() == [0, 64]
    anchors, cut = delta_rows(50, 64, 128)
    assert cut == 50 and len(anchors) == 0


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("q_len", "kv_len"), [(100, 100), (70, 90)])
def test_delta_reproduces_dense_rows_and_shifts_the_others(causal, q_len, kv_len):
    q, k, v = make_qkv(q_len, kv_len)
    method = sparse.get(
        "delta", base=sparse.get("sink_window", sink=2, window=8), gamma=16, min_tail=20
    )
    layout, out_sparse, dense = run(method, q, k, v, causal)
    corrected = method.correct(q, k, v, out_sparse, layout, causal=causal)
    anchors, cut = delta_rows(q_len, 16, 20)
    exact = torch.cat([anchors, torch.arange(q_len - cut, q_len)])
    torch.testing.assert_close(corrected[:, :, exact], dense[:, :, exact])
    for row in range(q_len - cut):
        anchor = row - row % 16
        expected = out_sparse[:, :, row] + dense[:, :, anchor] - out_sparse[:, :, anchor]
        torch.testing.assert_close(corrected[:, :, row], expected)


def test_rettention_with_reference_statistics_reproduces_dense():
    q, k, v = make_qkv(60, 60)
    method = sparse.get("rettention", base=sparse.get("sink_window", sink=2, window=8))
    with pytest.raises(ValueError, match="stats is None"):
        method.correct(q, k, v, q, None, causal=True)
    calibrated = method.calibrated(q, k, v, causal=True, block_size=16)
    layout, out_sparse, dense = run(calibrated, q, k, v, True)
    torch.testing.assert_close(calibrated.correct(q, k, v, out_sparse, layout, causal=True), dense)
    inside = calibrated.stats.inside_mass
    assert ((inside > 0) & (inside <= 1 + 1e-6)).all()
    # Statistics from other inputs of the same shape still move the output towards dense.
    q2, k2, _ = make_qkv(60, 60, seed=1)
    q2, k2 = q + 0.1 * q2, k + 0.1 * k2
    layout, out_sparse, dense = run(calibrated, q2, k2, v, True)
    corrected = calibrated.correct(q2, k2, v, out_sparse, layout, causal=True)
    assert (corrected - dense).norm() < (out_sparse - dense).norm()
    with pytest.raises(ValueError, match="output shape"):
        calibrated.correct(q, k, v, out_sparse[:, :, :10], layout, causal=True)


def test_corrected_methods_take_input_dependence_from_their_base():
    assert sparse.get("delta", base="top_k").input_dependent
    assert not sparse.get("rettention").input_dependent
    assert sparse.get("delta").hyper_parameters()["base"]["name"] == "sink_window"

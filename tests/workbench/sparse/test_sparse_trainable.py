"""Composite and trainable methods against from-scratch statements of their rules (small inputs,
float64), gradients to their learned parts by finite differences, and their states in `sparsify`."""

import math
import statistics

import pytest
import torch
from torch import nn

import workbench.sparse as sparse
from kernels import api
from kernels.layout import Layout
from workbench.sparse.branches import BranchOutput, merge_by_lse
from workbench.sparse.hax_ranking import pairwise_ranking_loss, ranking_targets, running_queries
from workbench.sparse.seer import LOSS, block_max_target, distillation_loss
from workbench.sparse.spark import statistical_threshold

DTYPE = torch.float64
CLOSE = {"rtol": 1e-5, "atol": 1e-5}
"""`kernels.api.sparse_attention`'s reference computes in float32 (the from-scratch rules here in
float64)."""


def make_qkv(q_len=24, heads=2, kv_heads=1, d=8, seed=0, batch=1):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d, generator=generator, dtype=DTYPE)
    k = torch.randn(batch, kv_heads, q_len, d, generator=generator, dtype=DTYPE)
    v = torch.randn(batch, kv_heads, q_len, d, generator=generator, dtype=DTYPE)
    return q, k, v


def restricted(q_row, keys, values, kept, scale):
    """Softmax attention of one query over the ``kept`` keys (0 when none)."""
    if not kept.any():
        return torch.zeros_like(values[0])
    weights = torch.softmax((keys[kept] @ q_row) * scale, dim=0)
    return weights @ values[kept]


def perturbed_state(method, heads, d, seed=1):
    state = method.state_module(layer=0, heads=heads, d_head=d).to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in state.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=DTYPE))
    return state


def substitute(state, **values):
    """Make ``values`` the state's tensors of those names (so gradcheck's inputs are used)."""
    for name, value in values.items():
        delattr(state, name)
        setattr(state, name, value)


# ---------------------------------------------------------------------------- combination
def test_merge_by_lse_of_disjoint_branches_is_attention_over_their_union():
    q, k, v = make_qkv()
    left = torch.rand(1, 2, 24, 24, generator=torch.Generator().manual_seed(3)) < 0.5
    layouts = [Layout.from_token_mask(m, block_q=16, block_k=16) for m in (left, ~left)]
    outputs = [
        BranchOutput(*api.sparse_attention(q, k, v, lay, return_lse=True, impl="reference"))
        for lay in layouts
    ]
    dense = api.sparse_attention(q, k, v, Layout.dense(24, 24), impl="reference")
    torch.testing.assert_close(merge_by_lse(outputs), dense, rtol=1e-6, atol=1e-6)  # float32 lse


# ---------------------------------------------------------------------------- NSA
def naive_nsa(method, state, q, k, v, scale):
    """Per query and head: compressed keys, block importance, the three key sets and outputs."""
    l, d = method.compress_block, method.compress_stride  # noqa: E741 (the paper's names)
    lsel = method.select_block
    _, heads, n, _ = q.shape
    group = heads // k.shape[1]
    n_cmp = (n - l) // d + 1
    blocks = [k[0, :, c * d : c * d + l] for c in range(n_cmp)]
    kc = torch.stack(
        [sum(b[:, p] @ state.pool_k[p] for p in range(l)) + state.pool_k_bias for b in blocks], 1
    )
    vblocks = [v[0, :, c * d : c * d + l] for c in range(n_cmp)]
    vc = torch.stack(
        [sum(b[:, p] @ state.pool_v[p] for p in range(l)) + state.pool_v_bias for b in vblocks], 1
    )
    n_sel = math.ceil(n / lsel)
    outputs = torch.zeros(3, heads, n, q.shape[-1], dtype=DTYPE)
    masks = torch.zeros(2, heads, n, n, dtype=torch.bool)
    for t in range(n):
        seen = torch.tensor([c * d + l - 1 <= t for c in range(n_cmp)])
        importance = torch.zeros(heads, n_sel, dtype=DTYPE)
        for h in range(heads):
            kv_head = h // group
            if seen.any():
                probs = torch.softmax((kc[kv_head][seen] @ q[0, h, t]) * scale, 0)
                for c, p in zip(torch.nonzero(seen).squeeze(1).tolist(), probs, strict=True):
                    for key in range(c * d, c * d + l):
                        importance[h, key // lsel] += p / l
            outputs[0, h, t] = restricted(q[0, h, t], kc[kv_head], vc[kv_head], seen, scale)
        for h in range(heads):
            group_importance = importance[(h // group) * group : (h // group + 1) * group].sum(0)
            local = t // lsel
            ranking = {
                j: math.inf if j in (0, local, local - 1) else group_importance[j].item()
                for j in range(n_sel)
                if j * lsel <= t
            }
            chosen = sorted(ranking, key=lambda j: -ranking[j])[: method.top_n]
            keys = torch.arange(n)
            masks[0, h, t] = torch.isin(keys // lsel, torch.tensor(chosen)) & (keys <= t)
            masks[1, h, t] = (keys <= t) & (keys > t - method.window)
            for branch in range(2):
                outputs[branch + 1, h, t] = restricted(
                    q[0, h, t], k[0, h // group], v[0, h // group], masks[branch, h, t], scale
                )
    return outputs, masks


def test_nsa_branches_equal_dense_attention_restricted_to_their_keys():
    method = sparse.get(
        "nsa", compress_block=4, compress_stride=2, select_block=4, top_n=3, window=5
    )
    q, k, v = make_qkv(q_len=24, heads=4, kv_heads=2)
    state = perturbed_state(method, heads=4, d=8)
    scale = 8**-0.5
    branches = method.branches(q, k, v, causal=True, block_size=16, state=state)
    expected, masks = naive_nsa(method, state, q, k, v, scale)
    assert [b.name for b in branches] == ["compressed", "selected", "window"]
    for index, branch in enumerate(branches[1:]):
        assert torch.equal(branch.layout.to_dense()[0].expand_as(masks[index]), masks[index])
    outs = [
        api.sparse_attention(
            q,
            b.k if b.k is not None else k,
            b.v if b.v is not None else v,
            b.layout,
            impl="reference",
        )[0]
        for b in branches
    ]
    for out, want in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, want, **CLOSE)
    out, layout = method.attend(q, k, v, causal=True, block_size=16, impl="reference", state=state)
    gates = state.gates(q)
    mixed = sum(gates[0, :, :, c, None] * expected[c] for c in range(3))
    torch.testing.assert_close(out[0], mixed.to(out.dtype), **CLOSE)
    assert torch.equal(layout.to_dense()[0], masks[0] | masks[1])


def test_gradients_reach_nsa_gates_and_pooling():
    method = sparse.get(
        "nsa", compress_block=4, compress_stride=2, select_block=4, top_n=3, window=3
    )
    q, k, v = make_qkv(q_len=12, heads=2, kv_heads=1, d=4)
    state = perturbed_state(method, heads=2, d=4)

    names = ("gate_bias", "gate_weight", "pool_v_bias", "pool_v")
    base = {name: getattr(state, name).detach().clone() for name in names}
    for name in names:

        def output(value, name=name):
            substitute(state, **{**base, name: value})
            return method.attend(
                q, k, v, causal=True, block_size=16, impl="reference", state=state
            )[0]

        value = base[name].clone().requires_grad_()
        # Through the kernels' float32 attention: steps of 1e-4, tolerances of float32 differences.
        assert torch.autograd.gradcheck(output, (value,), eps=1e-4, atol=2e-3, rtol=1e-2), name
    substitute(state, **base)
    pool_k = state.pool_k.detach().clone().requires_grad_()
    substitute(state, pool_k=pool_k)  # the compressed keys: gradients through that branch
    method.attend(q, k, v, causal=True, block_size=16, impl="reference", state=state)[
        0
    ].sum().backward()
    assert pool_k.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- learned block gate
def test_seer_selection_and_distillation_target_from_scratch():
    method = sparse.get("seer_gate", k=2, d_gate=4)
    q, k, _ = make_qkv(q_len=64, heads=2, kv_heads=1)
    state = perturbed_state(method, heads=2, d=8)
    logits = state.logits(q, k, 16, causal=True)
    for h in range(2):
        for i in range(4):
            qi = q[0, h, i * 16 : (i + 1) * 16].mean(0) @ state.q_proj[h]
            for j in range(4):
                keys = k[0, 0, j * 16 : (j + 1) * 16]
                pooled = torch.cat([keys.amax(0), keys.amin(0), keys.mean(0)])
                want = (qi @ (pooled @ state.k_proj[h])).item() / 2 if j <= i else -math.inf
                assert logits[0, h, i, j].item() == pytest.approx(want, rel=1e-9)
    chosen = method.branches(q, k, k, causal=True, block_size=16, state=state)[
        0
    ].layout.block_mask()
    for h in range(2):
        for i in range(4):
            ranked = sorted(range(i + 1), key=lambda j: (j != i, -logits[0, h, i, j].item()))
            assert set(torch.nonzero(chosen[0, h, i]).squeeze(1).tolist()) == set(ranked[:2])
    target = block_max_target(q, k, 16, causal=True, scale=None)
    probs = torch.softmax(
        (q @ k.transpose(-1, -2) * 8**-0.5).masked_fill(
            torch.ones(64, 64, dtype=torch.bool).triu(1), -math.inf
        ),
        -1,
    )
    pooled = torch.nn.functional.max_pool2d(probs[0], 16)
    torch.testing.assert_close(target[0].double(), pooled / pooled.sum(-1, keepdim=True), **CLOSE)


def test_gradients_reach_the_block_gate_through_its_distillation_loss():
    method = sparse.get("seer_gate", k=1, d_gate=3)
    q, k, v = make_qkv(q_len=32, heads=1, kv_heads=1, d=4)
    state = perturbed_state(method, heads=1, d=4)
    target = block_max_target(q, k, 16, causal=True, scale=None)

    def loss(q_proj):
        substitute(state, q_proj=q_proj)
        return distillation_loss(state.logits(q, k, 16, causal=True), target)

    assert torch.autograd.gradcheck(loss, (state.q_proj.detach().clone().requires_grad_(),))
    method.attend(q, k, v, causal=True, block_size=16, impl="reference", state=state)
    state.losses[LOSS].backward()
    assert state.k_proj.grad.abs().sum() > 0 and state.losses[LOSS].item() > 0


# ---------------------------------------------------------------------------- HAX
def test_hax_selection_and_output_from_scratch():
    method = sparse.get("hax", n_bits=2, n_select=3)
    q, k, v = make_qkv(q_len=20, heads=2, kv_heads=1)
    state = perturbed_state(method, heads=2, d=8)
    out, layout = method.attend(q, k, v, causal=True, block_size=16, impl="reference", state=state)
    bits = lambda x: sum(int(b) << i for i, b in enumerate((x @ state.projections) > 0))  # noqa: E731
    scores = k[0, 0] @ state.weight + state.bias
    for h in range(2):
        for t in range(20):
            bucket = [j for j in range(t + 1) if bits(k[0, 0, j]) == bits(q[0, h, t]) or j == t]
            best = sorted(range(t + 1), key=lambda j: -scores[j].item())[:3]
            kept = torch.zeros(20, dtype=torch.bool)
            kept[sorted(set(bucket) | set(best))] = True
            assert torch.equal(layout.to_dense()[0, h, t], kept)
            want = restricted(q[0, h, t], k[0, 0], v[0, 0], kept, 8**-0.5)
            torch.testing.assert_close(out[0, h, t], want, **CLOSE)


def test_gradients_reach_the_hax_key_scorer():
    method = sparse.get("hax", n_bits=1, n_select=2)
    q, k, v = make_qkv(q_len=10, heads=1, kv_heads=1, d=4)
    state = perturbed_state(method, heads=1, d=4)

    def output(weight):
        substitute(state, weight=weight)
        return method.attend(q, k, v, causal=True, block_size=16, impl="reference", state=state)[0]

    # The forward pass does not depend on the scorer except through the discrete top-n: the
    # straight-through gate's gradient is that of v_j * sigmoid(s_j) at the same selection.
    weight = state.weight.detach().clone().requires_grad_()
    output(weight).sum().backward()
    assert weight.grad.abs().sum() > 0
    layout = method.branches(q, k, v, causal=True, block_size=16, state=state)[0].layout

    def gated(weight):
        gate = torch.sigmoid(k @ weight + state.bias)
        return api.sparse_attention(q, k, v * gate.unsqueeze(-1), layout, impl="reference")

    probe = weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(gated, (probe,), eps=1e-4, atol=2e-3, rtol=1e-2)
    gate = torch.sigmoid(k @ weight.detach() + state.bias)
    want = torch.autograd.functional.vjp(
        lambda w: api.sparse_attention(
            q,
            k,
            v * (torch.sigmoid(k @ w + state.bias) / gate).unsqueeze(-1),
            layout,
            impl="reference",
        ),
        weight.detach(),
        torch.ones(1, 1, 10, 4, dtype=DTYPE),
    )[1]
    torch.testing.assert_close(weight.grad, want, **CLOSE)


# ---------------------------------------------------------------------------- HAX, the authors' way
def naive_key_scores(state, q, k, causal):
    """Per head and key: the scorer's MLP on [k_j, running sum of the queries that see j]."""
    _, heads, q_len, d = q.shape
    kv_len = k.shape[2]
    scores = torch.zeros(heads, kv_len, dtype=DTYPE)
    for h in range(heads):
        for j in range(kv_len):
            seen = [i for i in range(q_len) if not causal or i + kv_len - q_len <= j]
            running = sum((q[0, h, i] for i in seen), torch.zeros(d, dtype=DTYPE))
            norm = running.norm()
            running = running / norm if norm > 0 else running
            x = torch.cat([k[0, h * k.shape[1] // heads, j], running])
            x = torch.relu(state.hidden_1.weight @ x + state.hidden_1.bias)
            x = torch.relu(state.hidden_2.weight @ x + state.hidden_2.bias)
            scores[h, j] = state.out.weight[0] @ x + state.out.bias[0]
    return scores


@pytest.mark.parametrize("causal", [True, False])
def test_hax_ranking_selection_and_output_from_scratch(causal):
    method = sparse.get("hax_ranking", keys=6, n_bits=2)
    q, k, v = make_qkv(q_len=20, heads=2, kv_heads=1)
    state = method.state_module(layer=0, heads=2, d_head=8).to(DTYPE)
    torch.manual_seed(5)
    projections = torch.randn(8, 2)
    torch.manual_seed(5)  # the call draws the same projections
    with torch.no_grad():
        out, layout = method.attend(
            q, k, v, causal=causal, block_size=16, impl="reference", state=state
        )
    bits = lambda x: sum(int(b) << i for i, b in enumerate((x @ projections.double()) > 0))  # noqa: E731
    scores = naive_key_scores(state, q, k, causal)
    torch.testing.assert_close(state.key_scores(q, k, causal)[0], scores, rtol=1e-12, atol=1e-12)
    for h in range(2):
        for t in range(20):
            seen = list(range(t + 1)) if causal else list(range(20))
            bucket = [j for j in seen if bits(k[0, 0, j]) == bits(q[0, h, t])][-3:]  # latest 3
            best = sorted(seen, key=lambda j: -scores[h, j].item())[:3]
            kept = torch.zeros(20, dtype=torch.bool)
            kept[sorted(set(bucket) | set(best))] = True
            assert torch.equal(layout.to_dense()[0, h, t], kept)
            assert 1 <= kept.sum() <= 6
            want = restricted(q[0, h, t], k[0, 0], v[0, 0], kept, 8**-0.5)
            torch.testing.assert_close(out[0, h, t], want, **CLOSE)


def test_hax_ranking_running_sums_are_end_aligned_with_the_keys():
    q = torch.randn(1, 1, 5, 4, dtype=DTYPE)
    got = running_queries(q, kv_len=8, causal=True)
    for j in range(8):
        want = sum((q[0, 0, i] for i in range(5) if i + 3 <= j), torch.zeros(4, dtype=DTYPE))
        want = want / want.norm() if want.norm() > 0 else want
        torch.testing.assert_close(got[0, 0, j], want)
    everything = q[0, 0].sum(0) / q[0, 0].sum(0).norm()
    torch.testing.assert_close(running_queries(q, 8, causal=False)[0, 0], everything.expand(8, 4))


def test_hax_ranking_loss_is_the_pairwise_cross_entropy_towards_sigmoid_attention():
    method = sparse.get("hax_ranking", keys=8, n_bits=2)
    q, k, v = make_qkv(q_len=12, heads=2, kv_heads=1)
    q.requires_grad_()
    k.requires_grad_()
    state = method.state_module(layer=0, heads=2, d_head=8).to(DTYPE)
    torch.manual_seed(3)
    sampled = torch.rand(1, 2, 12).topk(4, dim=-1).indices
    torch.manual_seed(3)  # the call draws the same keys
    method.branches(q, k, v, causal=True, block_size=16, state=state)
    scores = naive_key_scores(state, q.detach(), k.detach(), causal=True)
    total = torch.zeros((), dtype=DTYPE)
    for h in range(2):
        keys = sampled[0, h].tolist()
        target = [
            sum(torch.sigmoid(q[0, h, i] @ k[0, 0, j] * 8**-0.5) for i in range(j, 12)).item()
            for j in keys
        ]
        for a in range(4):
            for b in range(4):
                label = ((target[a] > target[b]) + (target[a] >= target[b])) / 2
                logit = scores[h, keys[a]] - scores[h, keys[b]]
                total = total + nn.functional.binary_cross_entropy_with_logits(
                    logit, torch.tensor(label, dtype=DTYPE)
                )
    torch.testing.assert_close(state.losses["hax_ranking"], total / 32)
    assert pairwise_ranking_loss(torch.zeros(3), torch.tensor([1.0, 1.0, 1.0])).item() == (
        pytest.approx(math.log(2))
    )
    state.losses["hax_ranking"].backward()  # trains the scorer alone
    assert q.grad is None and k.grad is None
    assert all(parameter.grad.abs().sum() > 0 for parameter in state.parameters())


def test_hax_ranking_scorer_learns_the_order_of_the_attention_keys_receive():
    method = sparse.get("hax_ranking", keys=16, n_bits=2)
    q, k, v = make_qkv(q_len=32, heads=1, kv_heads=1, d=8, seed=4)
    state = method.state_module(layer=0, heads=1, d_head=8).to(DTYPE)
    every_key = torch.arange(32).view(1, 1, 32)
    target = ranking_targets(q, k, every_key, causal=True, scale=8**-0.5)

    def agreement():
        with torch.no_grad():
            scores = state.key_scores(q, k, causal=True)
        return pairwise_ranking_loss(scores, target).item()

    before = agreement()
    optimiser = torch.optim.Adam(state.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        optimiser.zero_grad()
        method.branches(q, k, v, causal=True, block_size=16, state=state)
        state.losses["hax_ranking"].backward()
        optimiser.step()
    assert agreement() < 0.6 * before


# ---------------------------------------------------------------------------- key padding
@pytest.mark.filterwarnings("ignore:.*not one span:UserWarning")
def test_masked_keys_in_pieces_reach_every_branch_or_the_method_refuses_them():
    """A key mask whose real tokens lie in several spans (padded batches, one span per example,
    run example by example: tests/workbench/sparse/test_padding.py) is applied to every branch:
    masked keys never change what the other queries get; methods with branches over pooled keys
    (NSA's compressed blocks, DuSA's summaries) refuse such masks instead of pooling them in."""
    q, k, v = make_qkv(q_len=32, heads=2, kv_heads=1, batch=2)
    padding = torch.ones(2, 32, dtype=torch.bool)
    padding[1, 24:] = False
    padding[1, 8:11] = False
    masked = ~padding[:, None, :, None]
    moved_k, moved_v = k + 100 * masked, v + 100 * masked  # what the masked positions hold
    options = {"causal": True, "block_size": 16, "impl": "reference", "key_padding": padding}
    for name in ("seer_gate", "moa", "sink_window"):
        method = sparse.get(name)
        state = method.state_module(layer=0, heads=2, d_head=8)
        state = None if state is None else state.to(DTYPE)
        with torch.no_grad():
            out, layout = method.attend(q, k, v, state=state, **options)
            moved, _ = method.attend(q, k, moved_v, state=state, **options)
        assert not layout.to_dense()[1][..., ~padding[1]].any(), name
        torch.testing.assert_close(moved[1, :, :24], out[1, :, :24], msg=name)
    for name in ("nsa", "dusa"):
        with pytest.raises(NotImplementedError, match="do not see the key padding"):
            sparse.get(name).attend(q, moved_k, moved_v, **options)


# ---------------------------------------------------------------------------- Spark, MoA, DuSA
def test_spark_threshold_is_the_normal_quantile_of_each_row():
    q, k, _ = make_qkv(q_len=40)
    layout = sparse.get("spark_top_k", k=6).select(q, k, causal=True, block_size=16)
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    kept = layout.to_dense()
    for t in (3, 6, 20, 39):
        row = scores[0, 1, t, : t + 1].tolist()
        if t + 1 <= 6:
            assert kept[0, 1, t, : t + 1].all()
            continue
        cut = statistics.NormalDist(statistics.fmean(row), statistics.pstdev(row)).inv_cdf(
            1 - 6 / (t + 1)
        )
        assert kept[0, 1, t].tolist() == [j <= t and row[j] >= cut for j in range(40)]
    gaussian = torch.randn(64, 1000, dtype=DTYPE)
    threshold = statistical_threshold(gaussian, torch.ones_like(gaussian, dtype=torch.bool), 50)
    assert (gaussian >= threshold[:, None]).sum(-1).double().mean().item() == pytest.approx(
        50, rel=0.1
    )


def test_moa_windows_per_head_from_calibration_and_state():
    method = sparse.get("moa", sink=1, candidates=(2, 8), mass=0.5)
    q, k, _ = make_qkv(q_len=32, heads=2)
    q[0, 0] = k[0, 0] * 4  # head 0 attends to its own position: a short window holds its mass
    windows = method.head_windows(q, k, causal=True)
    assert windows[0] == 2
    planned = sparse.get("moa", sink=1, plan=[windows])
    state = planned.state_module(layer=0, heads=2, d_head=8)
    layout = planned.branches(q, k, k, causal=True, block_size=16, state=state)[0].layout
    keys = torch.arange(32)
    for h, window in enumerate(windows):
        for t in range(32):
            want = (keys == 0) | ((keys <= t) & (keys > t - window))
            assert torch.equal(layout.to_dense()[0, h, t], want)
    with pytest.raises(ValueError, match="plan has no windows"):
        planned.state_module(layer=1, heads=2, d_head=8)


def test_dusa_is_one_softmax_over_its_block_and_the_earlier_block_summaries():
    method = sparse.get("dusa", block=4)
    q, k, v = make_qkv(q_len=14, heads=2, kv_heads=1)
    out, _ = method.attend(q, k, v, causal=True, block_size=16, impl="reference")
    scale, keys = 8**-0.5, torch.arange(14)
    stage1 = torch.stack(
        [
            torch.stack(
                [
                    restricted(
                        q[0, h, t], k[0, 0], v[0, 0], (keys // 4 == t // 4) & (keys <= t), scale
                    )
                    for t in range(14)
                ]
            )
            for h in range(2)
        ]
    )
    ends = [3, 7, 11, 13]
    for h in range(2):
        for t in range(14):
            own = (keys // 4 == t // 4) & (keys <= t)
            earlier = [e for b, e in enumerate(ends) if b < t // 4]
            logits = torch.cat([k[0, 0][own] @ q[0, h, t], k[0, 0][earlier] @ q[0, h, t]]) * scale
            values = torch.cat([v[0, 0][own], stage1[h, earlier]])
            torch.testing.assert_close(out[0, h, t], torch.softmax(logits, 0) @ values, **CLOSE)


def test_attention_dropout_applies_to_every_branch_of_a_composite_method():
    """With dropout each branch's probabilities are dropped (the pattern materialised): the
    output changes, the same seed repeats it, and the Triton kernels refuse it."""
    method = sparse.get("dusa", block=4)
    q, k, v = make_qkv(q_len=16, heads=2, kv_heads=1)
    kept, _ = method.attend(q, k, v, causal=True, block_size=16, impl="reference")
    dropped = []
    for _ in range(2):
        torch.manual_seed(5)
        out, _ = method.attend(q, k, v, causal=True, block_size=16, impl="reference", dropout=0.5)
        dropped.append(out)
    torch.testing.assert_close(dropped[0], dropped[1], rtol=0, atol=0)
    assert not torch.allclose(dropped[0], kept)
    torch.manual_seed(5)
    none, _ = method.attend(q, k, v, causal=True, block_size=16, impl="reference", dropout=0.0)
    torch.testing.assert_close(none, kept, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="dropout"):
        method.attend(q, k, v, causal=True, block_size=16, impl="triton", dropout=0.5)

"""Each method's selection against a brute-force statement of its rule on small inputs."""

import importlib
import inspect
import math
import pkgutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench.sparse as sparse
from kernels import api, reference
from kernels.layout import Layout, causal_token_mask
from workbench.sparse.quest import page_scores
from workbench.sparse.top_p import CHECK_EVERY, top_p_binary_search
from workbench.viz.methods import methods_figure

D_HEAD = 16


def make_qkv(q_len=40, kv_len=40, batch=2, heads=4, kv_heads=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, D_HEAD, generator=generator)
    k = torch.randn(batch, kv_heads, kv_len, D_HEAD, generator=generator)
    v = torch.randn(batch, kv_heads, kv_len, D_HEAD, generator=generator)
    return q, k, v


def visible_mask(q_len, kv_len, causal):
    if causal:
        return causal_token_mask(q_len, kv_len, "cpu")
    return torch.ones(q_len, kv_len, dtype=torch.bool)


def kept(method, q, k, causal, block_size=16):
    layout = method.select(q, k, causal=causal, block_size=block_size)
    scores = reference.scaled_scores(q, k)
    return layout.to_dense(scores).expand(*scores.shape), scores


def static_kept(method, q_len, kv_len, causal):
    q, k, _ = make_qkv(q_len, kv_len, batch=1, heads=1, kv_heads=1)
    return kept(method, q, k, causal)[0][0, 0]


# ---------------------------------------------------------------------------- token level
@pytest.mark.parametrize("causal", [True, False])
def test_top_k_keeps_exactly_the_k_largest_visible_scores(causal):
    q, k, _ = make_qkv(30, 40)
    mask, scores = kept(sparse.get("top_k", k=5), q, k, causal)
    visible = visible_mask(30, 40, causal)
    assert not (mask & ~visible).any()
    for b, h, i in [(0, 0, 0), (1, 3, 7), (0, 2, 29)]:
        row = scores[b, h, i][visible[i]]
        expected = set(row.argsort(descending=True)[:5].tolist())
        columns = torch.nonzero(visible[i]).squeeze(1)
        assert set(columns[mask[b, h, i][visible[i]]].tolist()) == set(
            columns[list(expected)].tolist()
        )
    assert (mask.sum(-1) == visible.sum(-1).clamp(max=5)).all()


@pytest.mark.parametrize("p", [0.3, 0.85, 0.99])
def test_binary_search_matches_the_sort_based_reference(p):
    scores = torch.randn(3, 5, 64, dtype=torch.float64) * 2
    probs = torch.softmax(scores, -1)
    low = top_p_binary_search(probs, p, tolerance=0.0)
    ours = probs > low.unsqueeze(-1)
    theirs = scores >= reference.top_p_threshold(scores, p).unsqueeze(-1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("tolerance", [1e-5, 0.0])
def test_binary_search_looks_at_its_rows_every_few_halvings(tolerance, op_counter):
    """Same thresholds as looking after every halving (the definition, written out here), with a
    host sync every `CHECK_EVERY` halvings instead of each."""
    probs = torch.softmax(
        torch.randn(4, 6, 200, generator=torch.Generator().manual_seed(1)) * 3, -1
    )
    total = probs.sum(-1)
    target, low, high = torch.clamp(total, max=0.85), torch.zeros_like(total), probs.amax(-1)
    halvings = 0
    while True:
        inside = (probs > low.unsqueeze(-1)) & (probs <= high.unsqueeze(-1))
        smallest = torch.where(inside, probs, torch.full_like(probs, float("inf"))).amin(-1)
        largest = torch.where(inside, probs, torch.zeros_like(probs)).amax(-1)
        active = (high - low > tolerance) & (smallest < largest)
        if not active.any():
            break
        middle = (low + high) / 2
        enough = (probs * (probs > middle.unsqueeze(-1))).sum(-1) >= target
        low = torch.where(active & enough, middle, low)
        high = torch.where(active & ~enough, middle, high)
        halvings += 1
    with op_counter() as counted:
        ours = top_p_binary_search(probs, 0.85, tolerance=tolerance)
    assert torch.equal(ours, low)
    assert counted.read_backs == -(-halvings // CHECK_EVERY) + 1 < halvings  # at 0, 8, ...


def test_binary_search_with_tolerance_reaches_p_with_few_extra_keys():
    probs = torch.softmax(torch.randn(4, 6, 200) * 3, -1)
    low = top_p_binary_search(probs, 0.85)
    keep = probs > low.unsqueeze(-1)
    assert ((probs * keep).sum(-1) >= 0.85 - 1e-6).all()
    exact = probs > top_p_binary_search(probs, 0.85, tolerance=0.0).unsqueeze(-1)
    assert (keep.sum(-1) - exact.sum(-1)).max() <= 2


@pytest.mark.parametrize("causal", [True, False])
def test_top_p_keeps_the_minimal_set_reaching_p(causal):
    q, k, _ = make_qkv(24, 24)
    method = sparse.get("top_p", p=0.85, tolerance=0.0)
    mask, scores = kept(method, q, k, causal)
    probs, _ = reference.masked_softmax(scores, visible_mask(24, 24, causal).expand_as(scores))
    mass = (probs * mask).sum(-1)
    assert (mass >= 0.85 - 1e-6).all()
    smallest = torch.where(mask, probs, torch.ones_like(probs)).amin(-1)
    assert (mass - smallest < 0.85).all()  # dropping the weakest kept key falls short


def test_top_p_inside_a_base_method_keeps_only_candidates():
    q, k, _ = make_qkv(48, 48)
    base = sparse.get("quest", page_size=8, budget=16)
    method = sparse.get("top_p", p=0.85, base=base)
    mask, scores = kept(method, q, k, True)
    candidates, _ = kept(base, q, k, True)
    assert not (mask & ~candidates).any()
    probs, _ = reference.masked_softmax(scores, candidates)
    assert ((probs * mask).sum(-1) >= 0.85 - 1e-4).all()
    assert sparse.get("top_p", base="quest").base.name == "quest"


# ---------------------------------------------------------------------------- input-agnostic
@pytest.mark.parametrize(("q_len", "kv_len"), [(40, 40), (24, 40)])
def test_sink_window_keeps_exactly_sinks_and_window(q_len, kv_len):
    mask = static_kept(sparse.get("sink_window", sink=3, window=5), q_len, kv_len, True)
    for i in range(q_len):
        position = i + kv_len - q_len
        expected = {j for j in range(kv_len) if j <= position and (j < 3 or position - j < 5)}
        assert set(torch.nonzero(mask[i]).squeeze(1).tolist()) == expected


def spartan_window(n, k, i):
    """The window of semantic-focus's banded mask, written out as in its definition."""
    low, up = (k - 1) // 2, k - 1 - (k - 1) // 2
    lb, ub = max(0, i - low), min(i + up + 1, n)
    if lb == 0:
        ub = k
    if ub == n:
        lb = n - k
    return set(range(lb, ub))


@pytest.mark.parametrize("k", [1, 4, 5])
def test_banded_keeps_exactly_k_keys_shifted_at_the_edges(k):
    n = 20
    mask = static_kept(sparse.get("banded", k=k), n, n, False)
    assert (mask.sum(-1) == k).all()
    for i in range(n):
        assert set(torch.nonzero(mask[i]).squeeze(1).tolist()) == spartan_window(n, k, i)
    causal = static_kept(sparse.get("banded", k=k), n, n, True)
    for i in range(n):
        assert set(torch.nonzero(causal[i]).squeeze(1).tolist()) == set(
            range(max(0, i - k + 1), i + 1)
        )


def test_block_local_and_global_tokens():
    n, k = 17, 5
    mask = static_kept(sparse.get("block_local", k=k, global_tokens=2), n, n, False)
    for i in range(n):
        expected = {j for j in range(n) if j // k == i // k or j < 2 or i < 2}
        assert set(torch.nonzero(mask[i]).squeeze(1).tolist()) == expected
    banded = static_kept(sparse.get("banded", k=3, global_tokens=1), n, n, False)
    assert banded[:, 0].all() and banded[0].all()


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("strided", lambda d: d % 4 == 0),
        ("power", lambda d: d == 0 or (d > 0 and d & (d - 1) == 0)),
    ],
)
def test_distance_patterns(name, rule):
    method = sparse.get(name, stride=4) if name == "strided" else sparse.get(name)
    mask = static_kept(method, 33, 33, True)
    for i in range(33):
        assert set(torch.nonzero(mask[i]).squeeze(1).tolist()) == {
            j for j in range(i + 1) if rule(i - j)
        }


def test_random_per_call_draws_k_visible_keys_anew_at_every_call():
    q, k, _ = make_qkv(30, 30, batch=2, heads=2, kv_heads=2)
    method = sparse.get("random_per_call", k=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first, second = (
            method.select(q, k, causal=True, block_size=16).to_dense(reference.scaled_scores(q, k))
            for _ in range(2)
        )
        torch.manual_seed(0)
        again = method.select(q, k, causal=True, block_size=16).to_dense(
            reference.scaled_scores(q, k)
        )
    visible_keys = torch.arange(30).clamp(max=3) + 1  # rows 0..2 see fewer than 4 keys
    assert torch.equal(first.sum(-1), visible_keys.expand(2, 2, 30))
    assert not (first & ~causal_token_mask(30, 30, "cpu")).any()
    assert not torch.equal(first, second) and torch.equal(first, again)
    assert not torch.equal(first[0], first[1]), "drawn per batch element"


def test_global_tokens_at_the_end_as_the_papers_code_lays_them():
    """spartan's ``mask_window`` / ``mask_block_local`` with ``ngtk`` global tokens appended: the
    local pattern over the other positions, the last rows and columns global."""
    banded = sparse.get("banded", k=3, global_tokens=2, global_at="end")
    mask = banded.static_mask(9, 9, False, torch.device("cpu"))
    assert mask[7:].all() and mask[:, 7:].all()
    local = mask[:7, :7]
    assert local.sum(-1).tolist() == [3] * 7
    assert local[0, :3].all() and local[6, 4:].all() and local[3, 2:5].all()
    blocks = sparse.get("block_local", k=3, global_tokens=1, global_at="end")
    mask = blocks.static_mask(8, 8, False, torch.device("cpu"))
    assert mask[7].all() and mask[:, 7].all()
    expected = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3), torch.ones(1, 1)).bool()
    assert torch.equal(mask[:7, :7], expected)
    with pytest.raises(ValueError, match="global_at must be one of"):
        sparse.get("banded", global_at="middle")


def test_random_keys_are_seeded_and_exactly_k_per_row():
    first = static_kept(sparse.get("random", k=4, seed=3), 30, 30, True)
    again = static_kept(sparse.get("random", k=4, seed=3), 30, 30, True)
    other = static_kept(sparse.get("random", k=4, seed=4), 30, 30, True)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first.sum(-1) == torch.arange(1, 31).clamp(max=4)).all()


def test_a_shape_keeps_sink_and_window_blocks():
    q, k, _ = make_qkv(80, 80, batch=1, heads=1, kv_heads=1)
    layout = sparse.get("a_shape", sink_blocks=1, window_blocks=2).select(
        q, k, causal=True, block_size=16
    )
    blocks = layout.block_mask()[0, 0]
    for row in range(5):
        expected = {0} | {col for col in range(5) if 0 <= row - col < 2}
        assert set(torch.nonzero(blocks[row]).squeeze(1).tolist()) == expected


# ---------------------------------------------------------------------------- block level
def test_xattention_layout_is_the_cumulative_selection_of_antidiagonal_scores():
    q, k, _ = make_qkv(96, 96)
    layout = sparse.get("xattention", tau=0.8, stride=8).select(q, k, causal=True, block_size=32)
    scores = reference.antidiagonal_block_scores(q, k, block=32, stride=8, causal=True)
    expected = reference.select_cumulative_blocks(scores, 0.8)
    expected &= Layout.dense(96, 96, block_q=32, block_k=32, causal=True).block_mask()
    assert torch.equal(layout.block_mask(), expected)
    with pytest.raises(ValueError, match="stride"):
        sparse.get("xattention", stride=12).select(q, k, causal=True, block_size=32)


def test_block_top_k_is_top_k_of_mean_pooled_scores():
    q, k, _ = make_qkv(64, 64)
    layout = sparse.get("block_top_k", k=2).select(q, k, causal=True, block_size=16)
    scores = reference.mean_pooled_block_scores(q, k, block_q=16, block_k=16, causal=True)
    assert torch.equal(layout.block_mask(), reference.select_top_k_blocks(scores, 2))


def test_quest_page_scores_and_selection():
    q, k, _ = make_qkv(20, 36, batch=1, heads=2, kv_heads=1)
    scores = page_scores(q, k, 8)
    for h, i, page in [(0, 0, 0), (1, 5, 4), (0, 19, 2)]:
        keys = k[0, 0, page * 8 : page * 8 + 8]
        k_min, k_max = keys.amin(0), keys.amax(0)
        expected = torch.maximum(q[0, h, i] * k_min, q[0, h, i] * k_max).sum()
        torch.testing.assert_close(scores[0, h, i, page], expected)
    mask, _ = kept(sparse.get("quest", page_size=8, budget=12), q, k, True)
    visible = visible_mask(20, 36, True)
    for h in range(2):
        for i in range(20):
            seen = [p for p in range(5) if visible[i, p * 8]]
            best = sorted(seen, key=lambda p: -scores[0, h, i, p].item())[:2]
            expected = {j for p in best for j in range(p * 8, min(p * 8 + 8, 36)) if visible[i, j]}
            assert set(torch.nonzero(mask[0, h, i]).squeeze(1).tolist()) == expected


def test_vertical_slash_keeps_the_top_columns_and_diagonals():
    q_len, last_q = 40, 8
    q, k, _ = make_qkv(q_len, q_len, batch=1, heads=1, kv_heads=1, seed=5)
    method = sparse.get(
        "vertical_slash",
        vertical_size=3,
        slash_size=4,
        last_q=last_q,
        forced_columns=1,
        forced_diagonals=1,
    )
    mask, scores = kept(method, q, k, True)
    probs = torch.softmax(
        scores[0, 0, -last_q:].masked_fill(~visible_mask(q_len, q_len, True)[-last_q:], -math.inf),
        -1,
    )
    column_mass = probs.sum(0)
    column_mass[0] = math.inf
    columns = set(column_mass.topk(3).indices.tolist())
    diagonal_mass = {}
    for row in range(last_q):
        for j in range(q_len):
            d = q_len - last_q + row - j
            diagonal_mass[d] = diagonal_mass.get(d, 0.0) + probs[row, j].item()
    diagonal_mass[0] = math.inf
    diagonals = set(sorted(diagonal_mass, key=lambda d: -diagonal_mass[d])[:4])
    for i in range(q_len):
        expected = {j for j in range(i + 1) if j in columns or i - j in diagonals}
        assert set(torch.nonzero(mask[0, 0, i]).squeeze(1).tolist()) == expected


# ---------------------------------------------------------------------------- every method
ALL = sparse.names()


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(ALL),
    q_len=st.integers(1, 40),
    extra=st.integers(0, 20),
    causal=st.booleans(),
)
def test_layouts_fit_the_inputs_and_respect_causality(name, q_len, extra, causal):
    q, k, _ = make_qkv(q_len, q_len + extra, batch=1, heads=2, kv_heads=1)
    layout = sparse.get(name).select(q, k, causal=causal, block_size=16)
    assert (layout.q_len, layout.kv_len, layout.block_q) == (q_len, q_len + extra, 16)
    assert layout.batch == 1 and layout.heads in (1, 2)
    if causal:
        mask = layout.to_dense(reference.scaled_scores(q, k))
        assert not (mask & ~causal_token_mask(q_len, q_len + extra, "cpu")).any()


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("top_k", {"k": 1000}),
        ("top_p", {"p": 1.0}),
        ("sink_window", {"sink": 0, "window": 1000}),
        ("banded", {"k": 1000}),
        ("block_top_k", {"k": 1000}),
        ("quest", {"budget": 1000}),
    ],
)
@pytest.mark.parametrize("causal", [True, False])
def test_keeping_every_key_reproduces_dense_attention(name, arguments, causal):
    if name in ("sink_window", "banded") and not causal:
        pytest.skip("trailing windows drop future keys without a causal mask")
    q, k, v = make_qkv(50, 50)
    layout = sparse.get(name, **arguments).select(q, k, causal=causal, block_size=16)
    out = api.sparse_attention(q, k, v, layout, impl="reference")
    dense = api.sparse_attention(q, k, v, Layout.dense(50, 50, causal=causal), impl="reference")
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "arguments", "field"),
    [
        ("top_k", {"k": 0}, "k"),
        ("top_p", {"p": 1.5}, "p"),
        ("top_p", {"tolerance": -1.0}, "tolerance"),
        ("sink_window", {"window": 0}, "window"),
        ("sink_window", {"sink": -1}, "sink"),
        ("xattention", {"tau": 0.0}, "tau"),
        ("vertical_slash", {"forced_columns": 20}, "forced_columns"),
        ("quest", {"page_size": 0}, "page_size"),
        ("banded", {"k": 2.5}, "k"),
        ("delta", {"gamma": 0}, "gamma"),
        ("delta", {"base": 3}, "base"),
    ],
)
def test_hyper_parameter_errors_name_the_field(name, arguments, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        sparse.get(name, **arguments)


def test_registry_lists_every_method_with_description_and_paper():
    described = sparse.describe()
    assert [name for name, _, _ in described] == sparse.names()
    assert len(set(sparse.names())) == len(sparse.names()) >= 15
    cited = ("arXiv", "openreview.net")  # a paper without an arXiv version: its OpenReview page
    assert all(
        description and any(where in paper for where in cited)
        for _, description, paper in described
    )
    assert sparse.names() == sorted(sparse.names())
    assert all(sparse.method_class(name).name == name for name in ALL)
    with pytest.raises(ValueError, match="unknown sparse method"):
        sparse.get("nope")
    with pytest.raises(ValueError, match="no hyper-parameter window"):
        sparse.get("top_k", window=3)


def test_every_method_module_registers_its_methods():
    """Each named `SparseMethod` class defined in the package is registered under its name."""
    modules = [
        importlib.import_module(f"workbench.sparse.{module.name}")
        for module in pkgutil.iter_modules(sparse.__path__)
    ]
    defined = {
        cls
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, sparse.SparseMethod) and "name" in vars(cls)
    }
    assert {cls.name: cls for cls in defined} == {name: sparse.method_class(name) for name in ALL}


def test_register_method_refuses_duplicates_and_undescribed_classes():
    with pytest.raises(ValueError, match="already registered"):
        sparse.register_method(sparse.method_class("top_k"))
    with pytest.raises(TypeError, match="SparseMethod subclass"):
        sparse.register_method(int)

    class Undescribed(sparse.method_class("top_k")):
        description = ""

    with pytest.raises(TypeError, match="description"):
        sparse.register_method(Undescribed)


@pytest.mark.parametrize("name", ALL)
def test_input_dependent_says_whether_the_selection_reads_q_and_k(name):
    """Input-agnostic methods select the same keys for any q, k of a shape; input-dependent ones
    select differently for some inputs (at 256 tokens every budget is below the sequence). Methods
    that draw keys (``random_per_call``) draw the same ones from the same generator state."""
    method = sparse.get(name)
    kept_sets = []
    for seed in range(2):
        q, k, _ = make_qkv(256, 256, batch=1, heads=1, kv_heads=1, seed=seed)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            kept_sets.append(kept(method, q, k, causal=True)[0])
    assert torch.equal(*kept_sets) != method.input_dependent


def test_methods_figure_and_module_main(tmp_path, monkeypatch):
    figure = methods_figure([sparse.get("sink_window"), sparse.get("top_k", k=3)], q_len=48)
    assert len(figure.data) == 2 and figure.data[0].z.shape == (48, 48)
    with pytest.raises(TypeError, match="resolve 'top_k' first"):
        methods_figure(["top_k"])
    monkeypatch.chdir(tmp_path)
    from workbench.sparse import power

    power.main()
    assert (tmp_path / "power.html").read_text().count("<html>") == 1

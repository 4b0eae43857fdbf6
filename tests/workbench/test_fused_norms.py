"""`workbench.fused_norms`: TransformerLens' LayerNorms, fused while their scale is unhooked,
against TransformerLens' own modules (forward, gradients, hooks) and inside built models."""

import copy
import io

import pytest
import torch
from transformer_lens import HookedTransformerConfig
from transformer_lens.components import LayerNorm, LayerNormPre

import toy_tasks
from workbench.fused_norms import FusedLayerNorm, FusedLayerNormPre, install_fused_layer_norms
from workbench.models import ModelConfig, build_model


def _cfg(dtype: torch.dtype) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=1, d_model=24, n_ctx=8, d_head=8, act_fn="relu", d_vocab=5, dtype=dtype
    )


def _pair(kind: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """TransformerLens' norm of ``kind`` and its fused counterpart with the same random
    parameters."""
    cfg = _cfg(dtype)
    if kind == "LNPre":
        return LayerNormPre(cfg), FusedLayerNormPre(cfg)
    plain = LayerNorm(cfg)
    with torch.no_grad():
        plain.w.normal_()
        plain.b.normal_()
    fused = FusedLayerNorm(cfg)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def _forward_backward(norm: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> list:
    """The output of ``norm`` on a leaf copy of ``x`` and the gradients of ``(out * upstream)``'s
    sum with respect to ``x`` and the parameters."""
    x = x.clone().requires_grad_(True)
    out = norm(x)
    (out * upstream).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in norm.parameters()]


@pytest.mark.parametrize("kind", ["LN", "LNPre"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_norm_equals_transformer_lens_forward_and_backward(kind, dtype):
    torch.manual_seed(0)
    plain, fused = _pair(kind, dtype)
    # offset and scaled rows, as a residual stream has them
    x = 3.0 + 5.0 * torch.randn(2, 8, 24, dtype=dtype)
    upstream = torch.randn(2, 8, 24, dtype=dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for expected, actual in zip(
        _forward_backward(plain, x, upstream), _forward_backward(fused, x, upstream), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("kind", ["LN", "LNPre"])
def test_hook_normalized_sees_the_normalised_values_before_scale_and_shift(kind):
    torch.manual_seed(1)
    plain, fused = _pair(kind, torch.float32)
    x = torch.randn(3, 8, 24)
    seen = {}
    for name, norm in (("plain", plain), ("fused", fused)):
        norm.hook_normalized.add_hook(lambda value, hook, name=name: seen.update({name: value}))
        norm(x)
    torch.testing.assert_close(seen["fused"], seen["plain"], rtol=1e-5, atol=1e-5)
    assert seen["fused"].mean(-1).abs().max() < 1e-5  # centred, before the shift


@pytest.mark.parametrize("kind", ["LN", "LNPre"])
def test_a_hook_on_the_scale_gets_transformer_lens_computation(kind):
    torch.manual_seed(2)
    plain, fused = _pair(kind, torch.float32)
    x = torch.randn(3, 8, 24)
    unhooked = fused(x)
    for norm in (plain, fused):  # freeze the scale at 2, as attribution methods do
        norm.hook_scale.add_hook(lambda scale, hook: torch.full_like(scale, 2.0))
    assert torch.equal(fused(x), plain(x))
    assert not torch.allclose(fused(x), unhooked)
    fused.hook_scale.remove_hooks()
    assert torch.equal(fused(x), unhooked)


def test_the_fused_path_is_one_operation_forward_and_one_backward(op_counter):
    plain, fused = _pair("LNPre", torch.float32)
    x = torch.randn(2, 8, 24, requires_grad=True)
    counts = {}
    for name, norm in (("plain", plain), ("fused", fused)):
        with op_counter() as counted:
            norm(x).sum().backward()
        counts[name] = counted.operations
    # the norm's one each way, the sum and its backward's few; TransformerLens' norm takes ~20
    assert counts["fused"] <= 5 and counts["plain"] >= 4 * counts["fused"]


def _small_model(task, normalization: str, parametrization: str = "transformer_lens"):
    """A 2-layer model of ``task`` from `build_model` with the given norms."""
    config = ModelConfig(
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_head=16,
        normalization=normalization,
        parametrization=parametrization,
        attention="bidirectional" if task.kind == "classification" else "causal",
        seed=0,
    )
    return build_model(task, config)


@pytest.mark.parametrize(
    ("task", "normalization", "parametrization"),
    [
        (toy_tasks.get("even_pairs"), "LNPre", "semantic_focus"),  # a classifier
        (
            toy_tasks.get("assoc_recall", vocab_size=32, n_pairs=4, seq_len=16),
            "LN",
            "transformer_lens",
        ),
        (toy_tasks.get("linear_regression", d=4, n_points=6), "LN", "transformer_lens"),
    ],
    ids=["classifier", "tokens", "continuous"],
)
def test_built_models_have_fused_norms_that_agree_with_run_with_cache(
    task, normalization, parametrization
):
    model = _small_model(task, normalization, parametrization).eval()
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, LayerNormPre))]
    assert len(norms) >= 2 * 2  # two a block (and a final one where the model has it)
    assert all(type(m) in (FusedLayerNorm, FusedLayerNormPre) for m in norms)
    inputs = task.sample(4, torch.Generator().manual_seed(0)).inputs
    fused_out = model(inputs)
    hooked_out, cache = model.run_with_cache(inputs)  # hooks every scale: TransformerLens' path
    assert "blocks.1.ln1.hook_scale" in cache
    torch.testing.assert_close(fused_out, hooked_out, rtol=1e-4, atol=1e-5)
    assert install_fused_layer_norms(model) == 0  # already fused: nothing to replace


def test_a_fused_model_pickles_and_loads_unfused_state_dicts():
    model = _small_model(toy_tasks.get("even_pairs"), "LN")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.blocks[0].ln1) is FusedLayerNorm
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.ln1 = LayerNorm(twin.cfg)  # TransformerLens' own: same parameter names
    assert twin.state_dict().keys() == model.state_dict().keys()
    model.load_state_dict(twin.state_dict())


def test_installing_keeps_the_modules_and_their_attached_hooks():
    from transformer_lens import HookedTransformer

    model = HookedTransformer(_cfg(torch.float32))
    norm = model.blocks[0].ln1
    seen = []
    model.add_hook("blocks.0.ln1.hook_normalized", lambda value, hook: seen.append(value))
    tokens = torch.tensor([[1, 2, 3]])
    model(tokens)
    calls = len(seen)  # TransformerLens normalises the query, key and value inputs apart
    assert install_fused_layer_norms(model) == 3  # ln1, ln2, ln_final
    assert model.blocks[0].ln1 is norm and type(norm) is FusedLayerNorm
    model(tokens)
    assert calls > 0 and len(seen) == 2 * calls
    torch.testing.assert_close(seen[calls:], seen[:calls], rtol=1e-5, atol=1e-5)

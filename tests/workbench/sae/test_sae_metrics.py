"""SAE metrics and attributions: each against a hand computation on a tiny example, splicing against
TransformerLens's own hooks, attributions against sae-lens's pre-activations."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toy_tasks
import workbench.sparse
from workbench.capture import SparsePlan, capture
from workbench.models import ModelConfig, build_model
from workbench.sae import TaskSource, feature_report, harvest
from workbench.sae.attribution import (
    direct_attribution,
    head_decoder_norms,
    pre_activations,
    relevant_attribution,
    source_attribution,
    variable_match,
)
from workbench.sae.config import SAEConfig, sae_lens_training_sae
from workbench.sae.evaluation import reconstruction_metrics, splice_metrics
from workbench.sae.features import position_sets
from workbench.sparse.patch import sparsify

TASK = toy_tasks.get("assoc_recall", vocab_size=32, n_pairs=4, seq_len=16)
CONFIG = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, attn_only=True, seed=1)
D_IN = CONFIG.n_heads * CONFIG.d_head


@functools.cache
def hooked() -> nn.Module:
    return build_model(TASK, CONFIG).eval()


@functools.cache
def random_sae(architecture: str) -> nn.Module:
    """A sae-lens training SAE with weights away from their initial symmetries."""
    config = SAEConfig(architecture=architecture, expansion=2, k=4, device="cpu")
    torch.manual_seed(11)
    sae = sae_lens_training_sae(config, D_IN, "blocks.1.attn.hook_z", "toy")
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name != "threshold":
                parameter.add_(0.2 * torch.randn_like(parameter))
    return sae


class StubSAE(nn.Module):
    """``encode`` / ``decode`` / ``forward`` returning given tensors or a fixed map."""

    def __init__(self, acts=None, reconstruction=None, scale: float = 1.0) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(torch.zeros(D_IN, 1))
        self.acts, self.reconstruction, self.scale = acts, reconstruction, scale

    def encode(self, x):
        return self.acts

    def decode(self, acts):
        return self.reconstruction

    def forward(self, x):
        return self.scale * x


def test_reconstruction_metrics_by_hand() -> None:
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])[:, None, :]
    stub = StubSAE(
        acts=torch.tensor([[1.0, 0, 0], [0, 0, 0], [2.0, 0, 1.0], [0, 0, 0]]),
        reconstruction=torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]),
    )
    metrics = reconstruction_metrics(stub, rows)
    # variance about the mean (0.5, 0.5): 4 rows x 0.5 = 2; unexplained: row 1 misses 1 -> 1
    assert metrics.fvu == pytest.approx(0.5) and metrics.explained_variance == pytest.approx(0.5)
    assert metrics.l0 == pytest.approx(0.75)  # (1 + 0 + 2 + 0) / 4
    assert metrics.dead_fraction == pytest.approx(1 / 3)  # feature 1 never fires
    assert metrics.dense_fraction == pytest.approx(2 / 3)  # features 0 (1/2) and 2 (1/4) > 0.1
    assert metrics.n_rows == 4


def tl_outputs(model: nn.Module, inputs: torch.Tensor, layer: int, transform) -> torch.Tensor:
    hook = (f"blocks.{layer}.attn.hook_z", lambda z, hook: transform(z))
    with torch.no_grad():
        return model.run_with_hooks(inputs, fwd_hooks=[hook])


@pytest.mark.parametrize("sparse_layer", [None, 1])
def test_splice_metrics_equal_transformer_lens_hooks(sparse_layer) -> None:
    model, batch = hooked(), TASK.sample(64, torch.Generator().manual_seed(3))
    plan = None
    method = workbench.sparse.get("top_k", k=3)
    if sparse_layer is not None:
        plan = SparsePlan(method, layers=(sparse_layer,), block_size=16)
    metrics = splice_metrics(model, StubSAE(scale=0.5), 0, TASK, batch, plan)

    def outputs(transform):
        if plan is None:
            return tl_outputs(model, batch.inputs, 0, transform)
        with sparsify(model, method, layers=[sparse_layer], block_size=16, record=False):
            return tl_outputs(model, batch.inputs, 0, transform)

    clean, half, zero = outputs(lambda z: z), outputs(lambda z: 0.5 * z), outputs(torch.zeros_like)
    targets = batch.targets.flatten()
    losses = [
        F.cross_entropy(out.flatten(0, 1), targets, ignore_index=-100).item()
        for out in (clean, half, zero)
    ]
    assert [metrics.loss_clean, metrics.loss_spliced, metrics.loss_zero] == pytest.approx(
        losses, rel=1e-5
    )
    assert metrics.loss_recovered == pytest.approx(
        (losses[2] - losses[1]) / (losses[2] - losses[0]), rel=1e-4
    )
    mask = batch.loss_mask
    kl = F.kl_div(
        F.log_softmax(half[mask].double(), -1), F.log_softmax(clean[mask].double(), -1),
        log_target=True, reduction="batchmean",
    )  # fmt: skip
    assert metrics.kl == pytest.approx(kl.item(), rel=1e-4)
    accuracy = (half.argmax(-1) == batch.targets)[mask].float().mean().item()
    assert metrics.metric == "accuracy" and metrics.spliced == pytest.approx(accuracy)


def test_splice_metrics_of_identity_and_zero() -> None:
    batch = TASK.sample(32, torch.Generator().manual_seed(4))
    same = splice_metrics(hooked(), StubSAE(scale=1.0), 1, TASK, batch)
    assert same.loss_recovered == pytest.approx(1.0) and same.kl == pytest.approx(0.0, abs=1e-12)
    assert same.spliced == same.clean
    zero = splice_metrics(hooked(), StubSAE(scale=0.0), 1, TASK, batch)
    assert zero.loss_recovered == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_head_attributions_sum_to_sae_lens_pre_activations(architecture) -> None:
    sae = random_sae(architecture)
    rows = torch.randn(20, CONFIG.n_heads, CONFIG.d_head)
    _, cache = sae.run_with_cache(rows.flatten(1))
    hidden_pre = cache["hook_sae_acts_pre"]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):  # sae-lens scales after the hook
        hidden_pre = hidden_pre * sae.W_dec.norm(dim=-1)
    per_head = direct_attribution(sae, rows)  # [rows, d_sae, heads]
    scale = sae.W_dec.norm(dim=-1) if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False) else 1
    torch.testing.assert_close(
        per_head.sum(-1) + sae.b_enc * scale, hidden_pre, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(pre_activations(sae, rows), hidden_pre, atol=1e-5, rtol=1e-5)
    # a head's term only depends on that head's part of the row
    changed = rows.clone()
    changed[:, 2] += 1.0
    moved = direct_attribution(sae, changed)
    torch.testing.assert_close(moved[..., [0, 1, 3]], per_head[..., [0, 1, 3]])
    norms = head_decoder_norms(sae, CONFIG.n_heads)
    assert torch.allclose(norms.square().sum(-1), sae.W_dec.square().sum(-1), rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_source_attributions_sum_to_the_encoding_of_z(sparse) -> None:
    sae = random_sae("topk")
    plan = (
        SparsePlan(workbench.sparse.get("top_k", k=3), layers=(1,), block_size=16)
        if sparse
        else None
    )
    batch = TASK.sample(6, torch.Generator().manual_seed(8))
    layer = capture(hooked(), batch.inputs, layers=[1], sparse=plan)[1]
    where = batch.loss_mask.nonzero()
    features = torch.tensor([0, 5, 17, 63])
    attribution = source_attribution(sae, layer, where, features)  # [n, F, kv]
    rows = layer.z.transpose(1, 2)[where[:, 0], where[:, 1]]
    assert attribution.shape == (len(where), 4, TASK.seq_len)
    expected = pre_activations(sae, rows)[:, features]
    scale = sae.W_dec.norm(dim=-1)[features]
    offset = (-(sae.b_dec @ sae.W_enc) + sae.b_enc)[features] * scale
    torch.testing.assert_close(attribution.sum(-1) + offset, expected, atol=1e-4, rtol=1e-4)
    for row, (_, position) in enumerate(where.tolist()):
        assert (attribution[row, :, position + 1 :] == 0).all()  # nothing from the future


def test_relevant_attribution_by_hand() -> None:
    attribution = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.0]]])  # [1, 2, 4]
    on, total = relevant_attribution(attribution, torch.tensor([[1, 3, -1]]))
    assert on.tolist() == [[6.0, 0.0]] and total.tolist() == [[10.0, 0.0]]


def test_position_sets_by_hand() -> None:
    relevant = torch.tensor([[3, 4, -1], [7, -1, -1], [0, -1, -1]])
    sets = position_sets(relevant, kv_len=8)
    assert torch.equal(sets["relevant"], relevant)
    # 3 -> 4 is relevant itself, 4 -> 5; 7 -> 8 is past the sequence; 0 -> 1
    assert sets["after_relevant"].tolist() == [[-1, 5, -1], [-1, -1, -1], [1, -1, -1]]


def test_variable_match_by_hand() -> None:
    active = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    match = variable_match("v", active, torch.tensor([5, 7, 5, 7]))
    # f0 fires on rows 0, 1: one of two has 5 (P 1/2), one of the two 5-rows (R 1/2) -> F1 1/2
    # f1 fires on row 2: P 1, R 1/2 -> F1 2/3
    torch.testing.assert_close(match.f1, torch.tensor([[0.5, 0.5], [2 / 3, 0.0]]))
    assert match.values.tolist() == [5, 7] and match.best_feature.tolist() == [1, 0]
    assert match.dedicated == 0
    perfect = variable_match(
        "v", torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.bool), torch.tensor([2, 3, 2])
    )
    assert perfect.dedicated == 2 and perfect.best_f1.tolist() == [1.0, 1.0]


def test_feature_report_equals_row_by_row_computation() -> None:
    sae = random_sae("topk").eval()
    source = TaskSource(TASK, 40, batch_size=16, seed=9)
    report = feature_report(sae, hooked(), source, 1)
    rows, where = harvest(hooked(), source.batches(), 1).tensors()
    acts = sae.encode(rows.flatten(1)).detach()
    torch.testing.assert_close(report.activations, acts)
    assert torch.equal(report.where, where)
    fires = acts > 0
    feature = int(fires.sum(0).argmax())
    direct = direct_attribution(sae, rows)[fires[:, feature], feature]  # [n_fire, heads]
    torch.testing.assert_close(
        report.head_attribution[feature], direct.mean(0), atol=1e-5, rtol=1e-5
    )
    # relevant share of that feature, one example at a time, and the share one position after
    on = after = total = 0.0
    for row in fires[:, feature].nonzero().flatten().tolist():
        example, position = where[row].tolist()
        batch = source.examples(torch.tensor([example]))
        layer = capture(hooked(), batch.inputs, layers=[1])[1]
        terms = source_attribution(
            sae, layer, torch.tensor([[0, position]]), torch.tensor([feature])
        )[0, 0]
        relevant = [p for p in batch.relevant_positions[0, position].tolist() if p >= 0]
        on += terms[relevant].sum().item()
        after += terms[[p + 1 for p in relevant if p + 1 not in relevant]].sum().item()
        total += terms.sum().item()
    assert report.relevant_share[feature].item() == pytest.approx(on / total, rel=1e-4)
    assert report.shares["after_relevant"][feature].item() == pytest.approx(after / total, rel=1e-4)
    targets = torch.cat([source.batch(i).targets for i in range(source.n_batches())])
    assert torch.equal(
        report.variables["target"].values, targets[where[:, 0], where[:, 1]].unique()
    )
    assert set(report.variables) == {"target", "query", "source"}
    assert report.summary()["alive"] == int(fires.any(0).sum())

"""Training through sae-lens: the loss falls, the saved SAE loads with sae-lens and gives the outputs
of the SAE that was trained, the folder is complete or absent, configs are checked."""

from __future__ import annotations

import pytest
import torch

from workbench.sae import ActivationStore, SAEConfig, load_sae, train_sae
from workbench.sae.attribution import pre_activations
from workbench.sae.config import ARCHITECTURES, sae_lens_training_sae
from workbench.sae.training import METADATA, save_sae

N_HEADS, D_HEAD = 2, 4


def synthetic_store(rows: int = 4096, seed: int = 0) -> ActivationStore:
    """Rows ``[n, 2, 4]`` that are sparse sums of 24 fixed directions (what an SAE can learn)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(24, N_HEADS * D_HEAD, generator=generator)
    codes = torch.rand(rows, 24, generator=generator) * (
        torch.rand(rows, 24, generator=generator) < 0.1
    )
    data = (codes @ directions).reshape(rows, N_HEADS, D_HEAD)
    store = ActivationStore((N_HEADS, D_HEAD), info={"synthetic": True})
    store.add(data, torch.stack([torch.arange(rows), torch.zeros(rows, dtype=torch.int64)], 1))
    return store


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_lowers_the_reconstruction_loss_and_saves(tmp_path, architecture) -> None:
    config = SAEConfig(
        architecture=architecture, expansion=4, k=4, l1_coefficient=0.5, l0_coefficient=0.01,
        steps=300, batch_size=128, lr=3e-3, device="cpu",
    )  # fmt: skip
    state = torch.random.get_rng_state()
    trained = train_sae(
        synthetic_store(), config, tmp_path / "sae", layer=1, model_name="toy", progress=False,
        extra={"note": "x"},
    )  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is untouched
    curve = trained.metadata["loss_curve"]
    assert len(curve) == 100 and curve[0][0] == 0 and curve[-1][0] == 297
    first, last = curve[0][2], sum(row[2] for row in curve[-5:]) / 5
    assert last < first / 4, (first, last)
    assert trained.metadata["layer"] == 1 and trained.metadata["note"] == "x"
    assert trained.metadata["harvest"] == {"synthetic": True}
    assert trained.config == config
    assert trained.sae.cfg.d_sae == 4 * N_HEADS * D_HEAD
    assert trained.sae.cfg.metadata.hook_name == "blocks.1.attn.hook_z"


def test_training_is_deterministic_by_seed(tmp_path) -> None:
    config = SAEConfig(expansion=2, k=3, steps=40, batch_size=64, device="cpu")
    first, again, other = (
        train_sae(synthetic_store(), c, tmp_path / name, layer=0, model_name="t", progress=False)
        for name, c in (
            ("a", config),
            ("b", config),
            ("c", SAEConfig(**{**config.to_dict(), "seed": 1})),
        )
    )
    assert torch.equal(first.sae.W_enc, again.sae.W_enc)
    assert not torch.equal(first.sae.W_enc, other.sae.W_enc)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_sae_loads_with_sae_lens_and_reproduces_the_trained_outputs(
    tmp_path, architecture
) -> None:
    import sae_lens

    config = SAEConfig(architecture=architecture, expansion=2, k=3, device="cpu")
    torch.manual_seed(0)
    training = sae_lens_training_sae(config, N_HEADS * D_HEAD, "blocks.0.attn.hook_z", "toy")
    with torch.no_grad():  # weights away from their symmetric start
        for parameter in training.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    if architecture == "batchtopk":
        training.topk_threshold.fill_(0.4)  # what training estimates; inference thresholds with it
    save_sae(training, tmp_path / "sae", {"layer": 0, "sae": config.to_dict()})
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    z = torch.randn(3, 5, N_HEADS, D_HEAD)  # [batch, pos, heads, d_head]: hook_z
    flat = z.flatten(2)
    with torch.no_grad():
        if architecture in ("batchtopk", "jumprelu"):  # a JumpReLU at the learned threshold
            pre = pre_activations(training, z.flatten(0, 1)).reshape(*z.shape[:2], -1)
            threshold = 0.4 if architecture == "batchtopk" else training.threshold
            expected = training.decode(pre.relu() * (pre > threshold))
        else:
            expected = training.decode(training.encode(flat))
        actual = loaded(z)
    assert actual.shape == z.shape
    torch.testing.assert_close(actual.flatten(2), expected, atol=1e-5, rtol=1e-5)
    assert load_sae(tmp_path / "sae").layer == 0


def test_an_sae_folder_is_never_replaced_and_a_crash_leaves_none(tmp_path, monkeypatch) -> None:
    config = SAEConfig(expansion=1, k=2, steps=5, batch_size=32, device="cpu")
    train_sae(
        synthetic_store(256), config, tmp_path / "sae", layer=0, model_name="t", progress=False
    )
    before = (tmp_path / "sae" / METADATA).read_bytes()
    with pytest.raises(FileExistsError, match="never written over"):
        train_sae(synthetic_store(256), config, tmp_path / "sae", layer=0, model_name="t")
    assert (tmp_path / "sae" / METADATA).read_bytes() == before

    import workbench.sae.training as training

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training, "atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        train_sae(
            synthetic_store(256),
            config,
            tmp_path / "other",
            layer=0,
            model_name="t",
            progress=False,
        )
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match="no SAE"):
        load_sae(tmp_path / "other")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("architecture", "gated", "architecture must be one of"),
        ("expansion", 0, r"expansion must be in \[1, inf\], got 0"),
        ("k", 1.5, r"k must be an integer in \[1, inf\]"),
        ("steps", True, r"steps must be an integer in \[1, inf\]"),
        ("seed", -1, r"seed must be in \[0, 9223372036854775807\]"),
        ("lr", float("nan"), "lr must be a finite number > 0"),
        ("l1_coefficient", -1.0, "l1_coefficient must be a finite number > 0"),
        ("device", "tpu", "device must be"),
    ],
)
def test_bad_sae_configs_name_the_field(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        SAEConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown"):
        SAEConfig.from_dict({"nope": 1})

"""Our top-level package is called ``kernels``, like Hugging Face's hub-kernels package that
transformers probes. transformers must see ours as "not the hub package" and keep working."""

import importlib.metadata

import torch
import transformers
from transformers.utils import import_utils

import kernels


def test_our_kernels_package_is_the_importable_one():
    assert kernels.__file__ is not None
    assert "sparse" in kernels.__doc__.lower()


def test_transformers_does_not_mistake_our_kernels_for_hub_kernels():
    ours = importlib.metadata.version("sparse-attention-workbench")
    low, high = import_utils.KERNELS_MIN_VERSION, import_utils.KERNELS_MAX_VERSION
    from packaging.version import Version

    assert not (Version(low) <= Version(ours) < Version(high)), (
        f"distribution version {ours} lies in the range [{low}, {high}) that transformers accepts for "
        "Hugging Face's `kernels`; move it out of that range"
    )
    assert import_utils.is_kernels_available() is False


def test_tiny_hf_models_build_and_run_with_our_kernels_importable():
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (2, 12))
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        )
    ).eval()
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    ).eval()
    with torch.no_grad():
        hidden = bert(input_ids=tokens).last_hidden_state
        logits = gpt2(input_ids=tokens).logits
    assert hidden.shape == (2, 12, 32) and torch.isfinite(hidden).all()
    assert logits.shape == (2, 12, 100) and torch.isfinite(logits).all()

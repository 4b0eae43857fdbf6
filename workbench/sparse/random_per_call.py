"""Random keys drawn anew at every attention call, as the semantic-focus paper's ``rnd`` mask
(rithram/spartan, ``attn_masks.py``, ``mask_rand``) draws them: an input-agnostic baseline whose
pattern changes from call to call (`workbench.sparse.static.RandomKeys` is one fixed pattern).

The draws come from torch's default generator of the device: `workbench.train` seeds it per step
from the run's seed, so training runs stay deterministic and resumable; elsewhere seed it
yourself (``torch.manual_seed``) for repeatable selections."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.layout import Layout
from workbench.sparse.base import SparseMethod, check_int, token_layout, visible
from workbench.sparse.registry import register_method


@register_method
@dataclass(frozen=True, eq=False)
class RandomPerCall(SparseMethod):
    """Every query of every batch element and head keeps ``k`` distinct keys drawn uniformly
    among the keys it can see (all of them when it sees fewer), drawn again at every call.

    spartan draws the ``k`` keys with replacement (a row may keep fewer than ``k`` distinct keys);
    here they are distinct, as in `workbench.sparse.static.RandomKeys`."""

    name = "random_per_call"
    description = "k uniformly random visible keys per query, drawn anew at every call"
    paper = "Transformers learn faster with semantic focus, arXiv 2506.14095 (code rithram/spartan)"
    input_dependent = False

    k: int = 5

    def validate(self) -> None:
        check_int("k", self.k, 1)

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        batch, heads, q_len, _ = q.shape
        kv_len = k.shape[2]
        seen = visible(q, k, causal)  # [q_len, kv_len]
        draws = torch.rand(batch, heads, q_len, kv_len, device=q.device).masked_fill(~seen, -1.0)
        chosen = draws.topk(min(self.k, kv_len), dim=-1).indices
        mask = torch.zeros_like(draws, dtype=torch.bool).scatter_(-1, chosen, True)
        return token_layout(mask & seen, causal=causal, block_size=block_size)


def main() -> None:
    """Write this method's layout figure (``random_per_call.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(RandomPerCall())


if __name__ == "__main__":
    main()

"""PowerAttention: every query keeps the keys at distance 0 and at power-of-two distances
``1, 2, 4, 8, ...`` behind it, so that stacked layers reach every earlier position in
``log2(n)`` hops (an exponential receptive field). The paper applies the pattern to blocks and
adds a local window and sinks; here ``window`` and ``sink`` cover those two and the distances are in
tokens (``window = 1`` and ``sink = 0`` give the pure power-of-two pattern)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.sparse.base import StaticMethod, check_int, distances
from workbench.sparse.registry import register_method


def is_power_of_two(values: torch.Tensor) -> torch.Tensor:
    """Elementwise: ``values`` (int64) is 1, 2, 4, 8, ..."""
    return (values > 0) & ((values & (values - 1)) == 0)


@register_method
@dataclass(frozen=True, eq=False)
class Power(StaticMethod):
    """Keys at power-of-two distances, plus the ``window`` latest keys and the first ``sink`` keys."""

    name = "power"
    description = "keys at power-of-two distances behind the query (+ window and sinks)"
    paper = "PowerAttention: exponentially scaling of receptive fields, arXiv 2503.03588"

    window: int = 1
    sink: int = 0

    def validate(self) -> None:
        check_int("window", self.window, 1)
        check_int("sink", self.sink, 0)

    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        distance = distances(q_len, kv_len, device)
        keys = torch.arange(kv_len, device=device).unsqueeze(0)
        mask = (
            is_power_of_two(distance)
            | ((distance >= 0) & (distance < self.window))
            | (keys < self.sink)
        )
        return mask


def main() -> None:
    """Write this method's layout figure (``power.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(Power())


if __name__ == "__main__":
    main()

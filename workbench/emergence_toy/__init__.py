"""The toy model of Zucchet et al.'s emergence paper (`model`) and its theory (`theory`): the
expected loss in closed form, the early dynamics of gradient flow, the leading-order plateau and
the gradient-flow curve drawn beside the simulations."""

from workbench.emergence_toy.model import (
    ARCHITECTURE,
    REPEAT_LOGITS,
    EmergenceToy,
    EmergenceToyConfig,
    build_emergence_toy,
    check_task,
)

__all__ = [
    "ARCHITECTURE",
    "REPEAT_LOGITS",
    "EmergenceToy",
    "EmergenceToyConfig",
    "build_emergence_toy",
    "check_task",
]

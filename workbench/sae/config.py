"""The settings of an attention-output SAE (`SAEConfig`) and their sae-lens configuration.

Architectures (sae-lens's classes, one config class each):

* ``standard``: ReLU with an L1 penalty (``l1_coefficient``), Kissane et al.'s choice;
* ``topk``: the ``k`` largest pre-activations per token;
* ``batchtopk``: ``k`` active per token on average over a batch (a threshold at inference);
* ``jumprelu``: a learned threshold per feature with an L0 penalty (``l0_coefficient``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from toy_tasks.base import check_int
from workbench.devices import resolve_device

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SAEConfig:
    """An SAE on one layer's concatenated head outputs (``d_in = n_heads * d_head``).

    Attributes:
        architecture: one of `ARCHITECTURES`.
        expansion: ``d_sae = expansion * d_in``.
        k: active features per token (``topk``, ``batchtopk``).
        l1_coefficient: weight of the L1 penalty (``standard``).
        l0_coefficient: weight of the L0 penalty (``jumprelu``).
        lr: Adam learning rate (constant).
        batch_size: activation rows per step.
        steps: optimisation steps.
        seed: seed of the initial weights and of the shuffling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    """

    architecture: str = "topk"
    expansion: int = 8
    k: int = 16
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    lr: float = 3e-3
    batch_size: int = 256
    steps: int = 2000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and its allowed range."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        for name in ("expansion", "k", "batch_size", "steps"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0, MAX_SEED)
        for name in ("l1_coefficient", "l0_coefficient", "lr"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {self.device!r}"
            )

    def d_sae(self, d_in: int) -> int:
        return self.expansion * d_in

    def check_width(self, d_in: int) -> None:
        """``ValueError`` naming ``k`` when a TopK architecture asks for more features than an SAE
        on rows of ``d_in`` has."""
        if self.architecture in ("topk", "batchtopk") and self.k > self.d_sae(d_in):
            raise ValueError(
                f"k must be at most d_sae = expansion * d_in = {self.d_sae(d_in)}, got {self.k}"
            )

    def torch_device(self) -> str:
        """The device to train on (sae-lens takes its name); ``ValueError`` when ``device`` asks
        for CUDA and there is none."""
        return str(resolve_device(self.device))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        from workbench.model_config import check_known_fields

        check_known_fields(cls, data, "sae")
        return cls(**data)


def sae_lens_training_sae(config: SAEConfig, d_in: int, hook_name: str, model_name: str) -> Any:
    """A fresh sae-lens ``TrainingSAE`` of ``config``'s architecture for rows of ``d_in``, set to
    reshape ``hook_z`` inputs ``[..., n_heads, d_head]`` at inference (weights from the current
    torch random state)."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    config.check_width(d_in)
    common = dict(
        d_in=d_in,
        d_sae=config.d_sae(d_in),
        device=config.torch_device(),
        reshape_activations="hook_z",
        metadata=SAEMetadata(hook_name=hook_name, model_name=model_name),
    )
    if config.architecture == "standard":
        cfg = sae_lens.StandardTrainingSAEConfig(l1_coefficient=config.l1_coefficient, **common)
        return sae_lens.StandardTrainingSAE(cfg)
    if config.architecture == "topk":
        return sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=config.k, **common))
    if config.architecture == "batchtopk":
        cfg = sae_lens.BatchTopKTrainingSAEConfig(k=config.k, **common)
        return sae_lens.BatchTopKTrainingSAE(cfg)
    cfg = sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=config.l0_coefficient, **common)
    return sae_lens.JumpReLUTrainingSAE(cfg)

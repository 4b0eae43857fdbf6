"""Training an attention-output SAE with sae-lens's own trainer on harvested activations.

`train_sae` hands sae-lens's ``SAETrainer`` a data provider over an `ActivationStore` (shuffled
batches of flat rows), with a constant learning rate (sae-lens asserts without ``lr_end``: it is set
to ``lr``) and no wandb (sae-lens then never runs its evaluator: `workbench.sae.evaluation` does,
after training), and saves the result with sae-lens's ``save_inference_model``, so
``sae_lens.SAE.load_from_disk(folder)`` loads it back (with ``reshape_activations="hook_z"``: it
takes ``[..., n_heads, d_head]``). `METADATA` beside the sae-lens files records what it was trained
on and its loss curve. The folder appears complete or not at all: everything is written into a
sibling temporary folder that is renamed at the end. sae-lens is imported only inside the
functions (it takes seconds to import).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from workbench.io import atomic_write_json
from workbench.sae.config import SAEConfig, sae_lens_training_sae
from workbench.sae.harvest import ActivationStore

METADATA = "workbench.json"
"""Our record beside sae-lens's files: the SAE config, the harvest, the layer, the loss curve, the
evaluation."""

LOSS_POINTS = 100
"""The loss curve keeps about this many points."""


@dataclass
class TrainedSAE:
    """An SAE in its folder: ``sae`` (sae-lens's inference SAE) and ``metadata`` (`METADATA`)."""

    folder: Path
    sae: Any
    metadata: dict[str, Any]

    @property
    def layer(self) -> int:
        return int(self.metadata["layer"])

    @property
    def config(self) -> SAEConfig:
        return SAEConfig.from_dict(self.metadata["sae"])

    @property
    def name(self) -> str:
        return self.folder.name

    def write_metadata(self) -> None:
        atomic_write_json(self.folder / METADATA, self.metadata)


def hook_name(layer: int) -> str:
    """TransformerLens's name of layer ``layer``'s concatenated head outputs."""
    return f"blocks.{layer}.attn.hook_z"


def train_sae(
    store: ActivationStore,
    config: SAEConfig,
    folder: str | Path,
    *,
    layer: int,
    model_name: str,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainedSAE:
    """Train an SAE of ``config`` on ``store``'s rows and save it in ``folder``, which must not
    exist (see the module docstring); ``extra`` goes into `METADATA` beside the config, the layer,
    the store's info and the loss curve (``[step, loss, mse_loss]`` rows). ``progress``: sae-lens's
    tqdm bar. The global random state is left as it was."""
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training import sae_trainer

    folder = check_new_folder(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        sae = sae_lens_training_sae(config, store.d_in, hook_name(layer), model_name)
    trainer_config = SAETrainerConfig(
        total_training_samples=config.steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr,
        device=config.torch_device(),
        dead_feature_window=max(1, min(1000, config.steps // 2)),
        feature_sampling_window=max(1, min(2000, config.steps)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    batches = store.batches(config.batch_size, torch.Generator().manual_seed(config.seed))
    trainer = _recording_trainer(SAETrainer)(trainer_config, sae, batches)
    trainer.record_every = max(1, config.steps // LOSS_POINTS)
    with _trainer_bar(sae_trainer, progress):
        trainer.fit()
    metadata = {
        "layer": layer,
        "hook_name": hook_name(layer),
        "sae": config.to_dict(),
        "harvest": store.info,
        "loss_curve": trainer.loss_curve,
        **(extra or {}),
    }
    save_sae(sae, folder, metadata)
    return load_sae(folder, device=config.torch_device())


def check_new_folder(folder: str | Path) -> Path:
    """``folder`` as a path; ``FileExistsError`` when it exists (an SAE is never replaced)."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: an SAE is never written over another")
    return folder


def save_sae(sae: Any, folder: str | Path, metadata: dict[str, Any]) -> Path:
    """Save a sae-lens training SAE as its inference SAE (``save_inference_model``) with
    ``metadata`` as `METADATA` into ``folder``, which must not exist: written into a sibling
    temporary folder renamed at the end, so the folder is complete or absent."""
    folder = check_new_folder(folder)
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # our own leftover of a crashed attempt
    sae.save_inference_model(staging)
    atomic_write_json(staging / METADATA, metadata)
    os.replace(staging, folder)
    return folder


def _recording_trainer(base: type) -> type:
    """``base`` (sae-lens's ``SAETrainer``) recording ``[step, loss, mse_loss]`` every
    ``record_every`` steps through its public ``step`` seam."""

    class RecordingTrainer(base):  # type: ignore[misc, valid-type]
        record_every = 1

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.loss_curve: list[list[float]] = []
            self._steps = 0

        def step(self, batch: torch.Tensor) -> Any:
            output = super().step(batch)
            if self._steps % self.record_every == 0:
                mse = output.losses.get("mse_loss", output.loss)
                self.loss_curve.append([self._steps, output.loss.item(), mse.detach().item()])
            self._steps += 1
            return output

    return RecordingTrainer


@contextmanager
def _trainer_bar(trainer_module: Any, show: bool) -> Iterator[None]:
    """sae-lens's tqdm bar on or off inside the block (the trainer has no switch of its own)."""
    if show:
        yield
        return
    with mock.patch.object(trainer_module, "tqdm", partial(trainer_module.tqdm, disable=True)):
        yield


def load_sae(folder: str | Path, device: str = "cpu") -> TrainedSAE:
    """The SAE saved in ``folder`` (sae-lens's files and `METADATA`)."""
    from sae_lens import SAE

    folder = Path(folder)
    if not (folder / METADATA).is_file():
        raise FileNotFoundError(f"no SAE in {folder} (no {METADATA})")
    metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    return TrainedSAE(folder, SAE.load_from_disk(folder, device=device).eval(), metadata)

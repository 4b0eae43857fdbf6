"""Attention-output sparse autoencoders (Kissane et al. 2024) on ``hook_z``.

* `harvest` / `ActivationStore`: one layer's concatenated head outputs through the capture pass
  (`workbench.sae.harvest`), from a `TaskSource` or a `TextSource` (`workbench.sae.sources`);
* `SAEConfig` / `train_sae`: training with sae-lens's own trainer and SAE classes, saved in
  sae-lens's format (`workbench.sae.config`, `workbench.sae.training`);
* `evaluate`: reconstruction, sparsity and splicing metrics (`workbench.sae.evaluation`);
* `feature_report` / `top_examples`: heads, source positions and task variables of each feature
  (`workbench.sae.features`, `workbench.sae.attribution`);
* `train_run_sae` / `train_text_sae` / `train_model_sae`: all of it for a workbench run, the
  bundled MiniLM over a text file, or any routed model
  (`workbench.sae.pipeline`).

sae-lens is imported only when an SAE is trained or loaded.
"""

from workbench.sae.config import ARCHITECTURES, SAEConfig
from workbench.sae.features import FeatureReport, feature_report, top_examples
from workbench.sae.harvest import ActivationStore, harvest
from workbench.sae.pipeline import (
    evaluate,
    evaluate_saved,
    subject,
    train_model_sae,
    train_run_sae,
    train_text_sae,
)
from workbench.sae.sources import TaskSource, TextSource
from workbench.sae.training import TrainedSAE, load_sae, train_sae

__all__ = [
    "ARCHITECTURES",
    "ActivationStore",
    "FeatureReport",
    "SAEConfig",
    "TaskSource",
    "TextSource",
    "TrainedSAE",
    "evaluate",
    "evaluate_saved",
    "feature_report",
    "harvest",
    "load_sae",
    "subject",
    "top_examples",
    "train_model_sae",
    "train_run_sae",
    "train_sae",
    "train_text_sae",
]

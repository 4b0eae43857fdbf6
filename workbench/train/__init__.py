"""Training of toy-task models: deterministic, resumable, with attention metrics and optional sparse
attention. Modules: `config` (`TrainConfig`), `data` (training batches), `losses`, `optim`
(optimisers, schedules), `evaluation` (one captured forward per chunk, registered evaluation
metrics), `checkpoint` (what a checkpoint holds) and `loop` (`train`).

    config = TrainConfig(task="assoc_recall", task_overrides={"vocab_size": 32, "n_pairs": 4,
                         "seq_len": 16}, model=ModelConfig(attn_only=True), steps=500, lr=3e-3)
    result = train(config, "runs/recall")
    result.metrics  # {"step": 500, "loss": ..., "eval_accuracy": ..., ...}

Files in ``out_dir``:

* ``metrics.jsonl``: the metrics series (schema in `workbench.runs`). Line ``step 0`` holds the
  evaluation of the initial model; then every ``metrics_every`` steps (and every ``eval_every``
  step, and the last step) a training line, with the evaluation at evaluation steps. An evaluation
  runs one captured forward per chunk of the evaluation batch (`workbench.capture`): the loss and
  the task metric (``eval_accuracy``: argmax accuracy on the scored positions; ``eval_mse``:
  squared error / ``d_output``) and every evaluation metric of ``eval_metrics`` come from it:
  ``"attention"`` logs ``attention = {"relevant_mass" | "entropy" | "k_0.9": [layer][head]}``,
  means over the scored positions of the attention the model uses (with ``sparse``, the softmax
  over the method's selection on the sparse layers, and beside it ``attention_dense``: the same
  of the dense softmax of the same q and k); ``"stability"`` logs ``stability =
  {"jacobian_norm" | "method_jacobian_norm" | "top_k_margin": [layer][head]}``
  (`workbench.metrics.stability.row_stability`, same means). With a fixed training set
  (``train_samples``) evaluations also log ``eval_loss_train`` and ``eval_accuracy_train`` /
  ``eval_mse_train`` on its first ``eval_batch_size`` examples.
* ``traces/final.{safetensors,json}``: a `workbench.trace.Trace` of the trained model on the first
  evaluation examples (statistics and patterns of the attention it uses; `final_trace`).
* ``checkpoints/step-<n>/``: a checkpoint (`workbench.checkpoint`): ``tensors.safetensors``
  (model and optimizer tensors), ``state.json`` (step, config, data-generator state, schedule,
  optimizer scalars) and, written last, ``manifest.json`` (size and sha256 of both). One at step 0
  (before the first log line), every ``checkpoint_every`` steps, at the end, and on SIGTERM (a
  scheduler's time limit): the step in progress finishes, a checkpoint is written and
  `TrainingInterrupted` is raised. The two newest are kept; older ones are removed once a new one
  is verified on disk, so a kill at any point leaves a complete checkpoint to resume from.
* ``replaced-<time>/``: files moved aside by an explicit choice (below), under their own paths.

Resuming (``train(..., resume=True)``, the default) continues from the newest checkpoint and cuts
``metrics.jsonl`` after its step. A damaged newest checkpoint (a file missing, truncated, changed
or unparsable) raises `CheckpointError` naming the file and the choices: ``resume="previous"``
continues from the newest checkpoint that verifies (the damaged ones are moved aside), and
``resume=False`` starts afresh (the checkpoints and the log are moved aside). A log with records
but no checkpoint raises too: nothing is deleted implicitly. A run folder of the old format (one
``checkpoint.safetensors`` + ``checkpoint.json`` pair) is read by `load_model` and rewritten as
``checkpoints/step-<n>/`` when training resumes.

Determinism: the weights come from the seed, training batches from a CPU ``torch.Generator`` seeded
with ``seed`` (or, with ``train_samples``, from a fixed set drawn once and reshuffled every epoch
with a seed derived from the epoch), the evaluation batch (fixed for the run) from a second
generator. A run resumed from a checkpoint continues bit for bit as the uninterrupted run, and its
``metrics.jsonl`` is the same.

Data: with ``curriculum`` (Garg et al.'s, `toy_tasks.Curriculum`) each training batch is drawn from
the curriculum's task at its step; the evaluation batch comes from the full task, or from the task
with ``eval_task_overrides`` (e.g. test data without repetition).

Losses: token tasks, cross-entropy on the scored positions; continuous tasks,
``1/2 ||y - y*||^2`` summed over ``d_output`` and averaged over the scored positions (the emergence
paper's loss). With ``sparse`` (a `SparseConfig`), every forward (training and evaluation) runs through
`workbench.sparse.patch.sparsify`, so the sparse model is what is trained.
"""

from workbench.train import focus_metric  # noqa: F401  (registers the focus evaluation metric)
from workbench.train.checkpoint import TrainState, load_model
from workbench.train.config import EarlyStop, SparseConfig, TrainConfig, migrate_config, sparse_plan
from workbench.train.data import TrainingData, evaluation_batch
from workbench.train.evaluation import (
    EVAL_CHUNK_TOKENS,
    evaluate,
    final_trace,
)
from workbench.train.loop import METRICS_FILE, Callback, TrainingInterrupted, TrainResult, train
from workbench.train.losses import task_loss, task_metrics
from workbench.train.optim import learning_rate, make_optimizer
from workbench.train.registry import EvalRows, eval_metric, get_eval_metric

__all__ = [
    "EVAL_CHUNK_TOKENS",
    "METRICS_FILE",
    "Callback",
    "EarlyStop",
    "EvalRows",
    "SparseConfig",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingData",
    "TrainingInterrupted",
    "eval_metric",
    "evaluate",
    "evaluation_batch",
    "final_trace",
    "get_eval_metric",
    "learning_rate",
    "load_model",
    "make_optimizer",
    "migrate_config",
    "sparse_plan",
    "task_loss",
    "task_metrics",
    "train",
]

"""Metrics of attention and of sparse methods.

* `workbench.metrics.fidelity`: how closely a model with a sparse method installed
  (`workbench.sparse.patch.sparsify`) follows the dense model: per-layer attention recall, density
  and output error, end-to-end KL or cosine similarity, task accuracy delta.
* `workbench.metrics.stability`: softmax Jacobian norms, selection margins and flip rates,
  Lipschitz estimates and bounds of attention layers (semantic-focus theory).
"""

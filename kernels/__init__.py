"""Shared sparse-attention backend: Triton kernels beside readable torch reference oracles.

Tensors in, tensors out; no knowledge of models or hooks. Import stays cheap (triton is imported
lazily by the functions that need it).
"""

"""Triton kernels of the backend (imported lazily by `kernels.api`; this package imports nothing)."""

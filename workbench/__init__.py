"""The analysis layer: tracing, sparse methods, metrics, training and figures."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-attention-workbench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

"""Kernel tests run the Triton kernels in Triton's CPU interpreter unless told otherwise; this must
be set before anything imports triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

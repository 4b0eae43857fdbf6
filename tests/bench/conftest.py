"""The benchmark helpers' tests run Triton kernels in Triton's CPU interpreter unless told
otherwise (as the kernel tests do); this must be set before anything imports triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

"""Test-wide settings. On machines of two cores or fewer (as the CI machine), torch's default of
one thread per core slows every process down as soon as anything else runs (a 50-step training run
took 130 s with 2 threads and 50 s with 1 on a loaded 2-core machine): the tests, and the
notebook kernels and worker processes they start, use one thread each there."""

import os
import sys

if (os.cpu_count() or 1) <= 2:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

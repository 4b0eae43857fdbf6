"""`workbench.devtools.op_counts.OpCounter` against counts known by construction."""

import torch

from workbench.devtools.op_counts import OpCounter


def test_counts_operations_but_not_views():
    x = torch.randn(4, 6)
    with OpCounter() as counted:
        y = x.t().reshape(6, 4).transpose(0, 1)  # views only
        z = (y * 2).sum()  # two operations
    assert counted.operations == 2 and counted.read_backs == 0
    assert z.item() == (x * 2).sum().item()


def test_names_the_call_site_of_each_read_back():
    x = torch.arange(5.0)
    with OpCounter() as counted:
        int(x.max())
        if (x > 3).any():
            x.sum().item()
    assert counted.read_backs == 3
    assert set(counted.read_back_sites) == {"?"}  # no project frame in this file's calls
    from kernels.layout import Layout

    scores = torch.randn(1, 1, 40, 40)
    with OpCounter() as counted:
        Layout.from_row_threshold(scores, scores.amax(-1), block_q=16, block_k=16)
    ((site, times),) = counted.read_back_sites.items()
    assert site.startswith("layout.py:") and times == 1 == counted.read_backs

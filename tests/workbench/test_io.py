import json

import pytest

from workbench.io import atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_atomic_safetensors_round_trip(tmp_path):
    import torch
    from safetensors.torch import load_file

    from workbench.io import atomic_write_safetensors

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6).view(2, 3).t()}  # non-contiguous
    path = atomic_write_safetensors(tmp_path / "t.safetensors", tensors)
    loaded = load_file(path)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_write_figure_opens_offline(tmp_path):
    import plotly.graph_objects as go

    from workbench.io import PLOTLY_SCRIPT, write_figure

    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    first = write_figure(figure, tmp_path / "a.html")
    write_figure(figure, tmp_path / "b.html")
    html = first.read_text()
    assert f'src="{PLOTLY_SCRIPT}"' in html and "cdn.plot.ly" not in html
    script = tmp_path / PLOTLY_SCRIPT
    assert script.stat().st_size > 1_000_000  # the whole plotly.js, written once for the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", PLOTLY_SCRIPT]
    again = write_figure(figure, tmp_path / "again" / "a.html")  # redrawn: the same bytes
    assert again.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path, umask):
    """A new file gets 0o666 less the umask (as open() gives), a replaced file keeps its mode:
    results, checkpoints and figures stay readable by others on a shared disk."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "x")
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_json(kept, {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640

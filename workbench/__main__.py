"""``python -m workbench``: the ``workbench`` command line."""

from workbench.cli import app

app(prog_name="workbench")

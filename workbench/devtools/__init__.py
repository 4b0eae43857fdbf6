"""Checks on the code base itself (run as modules, e.g. ``python -m workbench.devtools.imports``)."""

# The two set-up commands of the README: `make demo` (main job) and `make test` (tests).
# Both create a local virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# Installed first where the environment has no torch: an unpinned torch resolved by pip pulls a
# multi-GB CUDA build. On a CUDA machine use e.g. `make test TORCH=torch`. On Linux the pin alone
# also takes a CUDA build from PyPI: `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# takes the CPU build from PyTorch's own index instead.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: demo test lint readme readme-figure dashboard-screenshots browser-packages notebooks clean

demo: $(VENV)/.installed-base
	$(BIN)/workbench run emergence --quick --workers 2

test: $(VENV)/.installed-dev browser-packages
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Debian's chromium draws the notebooks' static figures (kaleido drives it headless; without it the
# figures fall back to interactive-only outputs with a note, and the tests check that), and with
# chromium-driver it runs the dashboard's browser tests (tests/browser, skipped without them).
# Installed where missing when apt-get can run (as root); otherwise the command is printed.
browser-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
			>/dev/null || echo "$$missing not installed: no static notebook figures, no browser tests" >&2; \
	else \
		echo "missing:$$missing (Debian: sudo apt-get install chromium chromium-driver); the tests that need them are skipped" >&2; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The README's tables of sparse methods and toy tasks, generated from the registries.
readme: $(VENV)/.installed-base
	$(BIN)/python -m workbench.devtools.readme

# The README's headline image and its caption (docs/emergence_quick.{png,json}), from the quick
# emergence run; the image needs a Chrome or Chromium on PATH (or at BROWSER_PATH) for kaleido.
readme-figure: $(VENV)/.installed-figures
	$(BIN)/python docs/make_readme_figure.py

# The README's screenshots of the dashboard's tabs (docs/dashboard_*.png), of the quick emergence
# and attention_saes runs under runs/ (trained first where missing).
dashboard-screenshots: $(VENV)/.installed-dev browser-packages
	$(BIN)/python docs/make_dashboard_screenshots.py

$(VENV)/.installed-figures: pyproject.toml $(VENV)/.installed-base
	$(BIN)/python -m pip install -e ".[figures]"
	touch $@

# Execute the notebooks and store them with their outputs (figures with a static PNG: needs a
# Chrome/Chromium, e.g. Debian's chromium package); commit the result.
notebooks: $(VENV)/.installed-dev
	$(BIN)/python -m workbench.devtools.notebooks

$(VENV)/.torch:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	touch $@

$(VENV)/.installed-base: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -e ".[dev,notebooks,sae,ray,browser]"
	touch $@ $(VENV)/.installed-base

clean:
	rm -rf $(VENV)

# make demo: set up .venv, test a shipped pretrained model on Fashion-MNIST and draw its
# figures, then train a small CapsNet on Fashion-MNIST (< 10 min on 2 CPU cores)
# make test: set up .venv (with the docs extra, and Chromium for the browser test) and run lint + the whole test suite
# make docs: install the docs extra into .venv and build the documentation site into site/ (strict)
# PYTHON=python3.10 VENV=.venv-3.10 make test: the same in another venv, made with that Python
# TORCH=2.5.1 make test: with that PyTorch (a new VENV; .ci/run tests the floor this way)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= 2.13.0
PY := $(VENV)/bin/python
CAPSNET := $(VENV)/bin/capsnet
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test lint format docs

install: $(STAMP)

# torch is pinned (TORCH) and installed first, so pip takes a build at hand where one exists (this
# image's CPU build for Python 3.11) instead of resolving a newer release. The native
# kernels are built last (about a minute each); without them PyTorch's paths run.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	$(CAPSNET) build-kernels || echo "capsnet: no native kernels; PyTorch's slower paths will run"
	touch $@

demo: $(STAMP)
	@$(CAPSNET) -q data fashion-mnist --no-download >/dev/null 2>&1 || \
		bash scripts/apt-install.sh dataset-fashion-mnist "capsnet will try to download it"
	@echo "== a shipped pretrained model: its Fashion-MNIST test accuracy, reproduced here"
	$(CAPSNET) pretrained
	$(call timed,testing 10000 images,$(CAPSNET) evaluate efficient-capsnet-fashion-mnist \
		--out $(DEMO_OUT)/pretrained)
	$(CAPSNET) -q figures efficient-capsnet-fashion-mnist --out $(DEMO_OUT)/pretrained
	@echo "== a small CapsNet trained from scratch"
	$(call timed,training 3 epochs of 20000 images and testing,$(CAPSNET) train \
		--dataset fashion-mnist --model capsnet-small --epochs 3 --train-limit 20000 \
		--out $(DEMO_OUT)/capsnet-small)
	@echo "== on a busy machine these take longer; capsnet --threads N limits PyTorch's threads"

# $(call timed,WHAT,COMMAND): COMMAND, then how long WHAT took
timed = @echo '$(2)'; start=$$SECONDS; $(2) && echo "== $(1) took $$((SECONDS - start)) s"

# the docs extra too: tests/test_docs.py builds the site as `make docs` does, and skips without it
test: $(STAMP) $(DOCS_STAMP) lint
	@command -v chromium >/dev/null || \
		bash scripts/apt-install.sh chromium "the browser test will be skipped"
	@test -d /usr/share/datasets/fashion-mnist || \
		bash scripts/apt-install.sh dataset-fashion-mnist "its loader test will be skipped"
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks experiments docs/hooks.py)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks experiments docs/hooks.py)

format: $(STAMP)
	$(VENV)/bin/ruff format src tests $(wildcard benchmarks experiments docs/hooks.py)
	$(VENV)/bin/ruff check --fix src tests $(wildcard benchmarks experiments docs/hooks.py)

# The docs extra (MkDocs, Material, mkdocstrings) once per venv, again when pyproject.toml changes
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

# The site from docs/ (mkdocs.yml), the CLI and API references generated (docs/hooks.py);
# --strict: any warning (a broken link, an unreadable docstring) fails the build
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# bincli: `make demo` runs the pipeline on the embedded default (local backend);
# `make test` runs the linter and the test suite. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
DEMO_WORK ?= bincli-work

.PHONY: demo test test-fast lint install install-test chromium bench clean

# uv installs into the venv with parallel downloads and unpacking: the test environment (6.7 GB; torch
# 2.14.1 is the CUDA build) in about 1 min where pip took 5.5 min on 2 cores. uv reads no pip config, so
# the local wheel folders of this project's machines are passed on where they exist; if uv fails for
# any reason, pip installs instead.
WHEEL_DIRS ?= $(wildcard /opt/pypi/files /opt/pypi-more/files /opt/wheels)
INSTALL = $(BIN)/uv pip install --python $(BIN)/python -q $(addprefix --find-links ,$(WHEEL_DIRS)) \
	--index-strategy unsafe-best-match --compile-bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

# Re-install only when the package definition changes. The demo extra is the S3 server the
# demo's stand-in for the public bucket runs on (shared/tools/abid_mirror.py); test includes it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(INSTALL) -e ".[demo]" || $(BIN)/pip install -q -e ".[demo]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(INSTALL) -e ".[test]" || $(BIN)/pip install -q -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test chromium

# Headless Chromium for the page tests (tests/test_inspect.py: a screenshot, every image decodes).
chromium:
	@# Headless Chromium for the inspect page test (tests/test_inspect.py), from Debian's packages,
	@# only where missing; without apt or root the test skips and says why.
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { command -v apt-get >/dev/null && { apt-get install -y -q chromium >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } \
	  || echo "note: headless Chromium not installed (apt-get install -y chromium); the page-render test will skip"

# The bucket stand-in, `bincli pipeline -c configs/demo.yaml`, one prediction, teardown (scripts/demo.sh).
# A few minutes on 2 CPU cores; DEMO_CONFIG=my.yaml runs another config the same way.
demo: $(VENV)/.installed
	SHARED=$(SHARED) DEMO_WORK=$(DEMO_WORK) DEMO_CONFIG=$(DEMO_CONFIG) BIN=$(BIN) bash scripts/demo.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# The whole suite: what CI runs (.ci/run). 2 workers on 2 cores, each module whole on one worker; the
# 25 slowest tests are listed at the end, so every CI log says where the time went.
test: $(VENV)/.installed-test chromium lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25

# The loop to run while working: the tests not marked slow (no training runs, servers, moto or mirror).
test-fast: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

bench: $(VENV)/.installed-test
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_WORK) .pytest_cache .ruff_cache

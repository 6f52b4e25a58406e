# The two commands of the README: `make demo` and `make test`.
# Everything installs into .venv (git-ignored) from PyPI; `make` again is a no-op.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

NATIVE := costtrace/.native-built

.PHONY: setup demo test lint bench
setup: $(STAMP) $(NATIVE)

# the native model (native/, Rust): built again by cargo when its sources change
$(NATIVE): $(STAMP) native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "costtrace needs Python 3.11 or newer"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=69"
	$(BIN)/pip install -q -e '.[fleet,dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/costtrace demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m bench.replay_bench

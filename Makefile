# The two commands of the README: `make demo` and `make test`.
# Everything installs into .venv (git-ignored) from PyPI; `make` again is a no-op.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

NATIVE := costtrace/.native-built
# rustup's cargo, where a non-login shell may not have it on PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup demo test lint bench
setup: $(STAMP) $(NATIVE)

# the native model (native/, Rust): built again by cargo when its sources change
$(NATIVE): $(STAMP) native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(STAMP): pyproject.toml constraints.txt
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "costtrace needs Python 3.11 or newer"'
	@command -v cargo >/dev/null || { echo "costtrace needs Rust's cargo for its native model: https://rustup.rs" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=69"
	$(BIN)/pip install -q -c constraints.txt -e '.[fleet,api,dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/python -m dev.demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cargo fmt --manifest-path native/Cargo.toml --check
	cargo clippy --manifest-path native/Cargo.toml --release --quiet -- -D warnings
	PYO3_PYTHON=$(abspath $(BIN))/python cargo clippy --manifest-path native/Cargo.toml --tests --quiet -- -D warnings

test: lint
	PYO3_PYTHON=$(abspath $(BIN))/python cargo test --manifest-path native/Cargo.toml --quiet
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m bench.replay_bench

# One task runner for developers, CI and the README.
# `make demo` and `make test` work on a fresh clone: they build .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test check lint types contracts proto proto-check config-docs config-docs-check pytest bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; this project needs Python 3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: anything else lets pip pick a CUDA build of several GB.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the report tests need (Chromium, poppler-utils): installed when missing and run as root
system-deps:
	@scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/secagg demo

test: check pytest

check: lint types contracts proto-check config-docs-check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy secagg dp audits coordinator

contracts: $(STAMP)
	$(BIN)/lint-imports

proto: $(STAMP)
	$(BIN)/python scripts/protoc.py

proto-check: $(STAMP)
	$(BIN)/python scripts/protoc.py --check

# docs/configuration.md and docs/{serve,silo}.schema.json, generated from the models in coordinator/config
config-docs: $(STAMP)
	$(BIN)/python scripts/config_reference.py

config-docs-check: $(STAMP)
	$(BIN)/python scripts/config_reference.py --check

# Four workers on two cores: most end-to-end tests wait out real stage deadlines rather than compute.
pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -n 4 --dist worksteal

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache

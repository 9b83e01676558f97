# The two commands a newcomer needs: `make dev` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test lint typecheck fast unit retrain clean

$(BIN)/python:
	scripts/system_deps.sh dev
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when a requirements file or pyproject.toml changes.
$(VENV)/.installed-%: requirements/*.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/$*.txt -e .
	touch $@

dev: $(VENV)/.installed-api $(VENV)/.installed-web
	scripts/dev.sh

test: $(VENV)/.installed-dev lint typecheck
	scripts/system_deps.sh test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The inner loop: everything but the browser, reliability and slow tests (real PostgreSQL and
# real api processes included). `make test` runs them all, with the linters and mypy.
fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not browser and not reliability and not slow"

# Retrain the champion on people's corrections (DATABASE_URL); promotes only when the gate
# passes, exits 3 when it refuses (docs/learning-loop.md).
retrain: $(VENV)/.installed-train
	$(BIN)/python -m digit_predictor.ml.retrain --promote

unit: fast  # the old name

# Also deletes `make dev`'s PostgreSQL cluster, which lives outside the checkout
# (`scripts/pg_cluster.sh dev-dir` says where).
clean:
	scripts/pg_cluster.sh destroy "$$(scripts/pg_cluster.sh dev-dir)"
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

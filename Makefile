# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   creates .venv, installs coatcheck with every extra, serves the reference app
#   make test   installs what the suite needs (Debian packages too), then lint, types, tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test test-oldest lint typecheck pytest system-deps bench clean

# A venv left half made (no python3-venv, apt-get refused) is removed, so the next run
# starts over rather than find a .venv/bin/python without pip.
.DELETE_ON_ERROR:
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all]"
	$(BIN)/coatcheck demo --host $(HOST) --port $(PORT)

system-deps:
	@sh scripts/system-deps.sh

test: $(BIN)/python system-deps
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(MAKE) lint typecheck pytest

# The suite again on the lowest versions pyproject.toml allows, on Python 3.11 (some of
# those releases have no wheels for 3.13). Deprecation warnings are let through: old
# releases raise them against today's anyio, click and the like.
OLDEST := .venv-oldest
test-oldest: system-deps
	test -x $(OLDEST)/bin/pip || { rm -rf $(OLDEST) && $(PYTHON) -m venv $(OLDEST); }
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e ".[dev]" -c scripts/oldest-versions.txt
	$(OLDEST)/bin/pytest -p no:cacheprovider -W "ignore::DeprecationWarning"
	# The library once more on Pydantic 1, which FastAPI still allows; the demo and the
	# CLI that serves it are written for Pydantic 2. The documents' citations, which import
	# the CLI's tests, were checked in the run above.
	$(OLDEST)/bin/python -m pip install --quiet "pydantic<2"
	$(OLDEST)/bin/pytest -p no:cacheprovider -W "ignore::DeprecationWarning" \
		--ignore=tests/demo --ignore=tests/e2e --ignore=tests/browser --ignore=tests/test_cli.py \
		--ignore=tests/test_docs.py

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest --cov --cov-report=term

bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/redis.py
	$(BIN)/python benchmarks/postgres.py

clean:
	rm -rf $(VENV) $(OLDEST) .mypy_cache .ruff_cache .pytest_cache .coverage

# Entry points: make demo, make test. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test torture demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[s3,pg,test,dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check pixazo_batch tests bench
	$(BIN)/ruff format --check pixazo_batch tests bench
	$(BIN)/mypy pixazo_batch tests bench

test: lint
	$(BIN)/pytest

torture: install
	PIXAZO_TORTURE=full $(BIN)/pytest tests/test_torture.py tests/test_cli.py tests/test_manifest.py

demo: install
	rm -rf out
	$(BIN)/pixazo-batch run jobs.example.jsonl --out out --sandbox
	@ls -l out/*.mp4 out/*/*.mp4 2>/dev/null || true

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache

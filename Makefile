# Entry points: make demo, make test. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test test-pg torture demo bench clean

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

# The engine's tests again with their state in PostgreSQL (those about the state file skipped).
test-pg: install
	PIXAZO_TEST_STATE=postgres $(BIN)/pytest tests/test_engine.py tests/test_hardening.py \
		tests/test_unattended.py tests/test_webhooks.py tests/test_buckets.py tests/test_inputs.py \
		tests/test_operator.py tests/test_poller.py tests/test_review_page.py tests/test_torture.py

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

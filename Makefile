# devicepipe developer tasks. `make test` and `make demo` set up .venv themselves (Python 3.13).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Python 3.13 matches the Lambda runtime (and lets `sam build` work): PYTHON=... overrides the search.
PYTHON ?= $(shell command -v python3.13 2>/dev/null || ls -d $$HOME/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1)
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

.PHONY: help venv test lint typecheck template security bench demo chaos build package clean

help:
	@echo "make demo   - run the whole pipeline end to end on the local stack and check it (REGIONS=a,b: both)"
	@echo "make chaos  - the local stack under load while workers, Redis and the loader are killed, then checked (2-3 min)"
	@echo "make test   - lint, type-check, template checks and the whole test suite (what CI runs)"
	@echo "make bench  - benchmarks, each printed as a ratio against its baseline"
	@echo "make build  - sam build (needs Python 3.13)"
	@echo "make package - sam build, then reproducible zips and a template per region in dist/"

$(BIN)/.installed: pyproject.toml layers/common/requirements.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.13 not found (install it, or run make PYTHON=/path/to/python3.13)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -r layers/common/requirements.txt
	@touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy layers/common/devicepipe functions devicepipe_tools tests benchmarks

# cfn-lint checks the template against both regions' resource specifications (each region's stack deploys it).
template: venv
	$(BIN)/cfn-lint --regions us-east-1 eu-west-1 -- template.yaml
	$(BIN)/sam validate --lint

# checkov has its own venv: its pinned dependencies clash with SAM CLI's and moto's.
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	@test -n "$(PYTHON)" || { echo "error: Python 3.13 not found"; exit 1; }
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check 'checkov==3.3.30'

# Every failed check fails the build; suppressions live next to their resource with a written reason.
security: $(CHECKOV)
	$(CHECKOV) -f template.yaml --framework cloudformation --quiet --compact

test: lint typecheck template security package
	$(BIN)/pytest

# make demo REGIONS=us-east-1,eu-west-1 runs it across both regions (replication, conflicts, both caches).
demo: venv
	$(BIN)/devicepipe local demo $(if $(REGIONS),--regions $(REGIONS))

# Not part of `make test` (it takes minutes): SEED=n repeats a run's faults, CHAOS_ARGS passes more options.
chaos: venv
	$(BIN)/devicepipe local chaos $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

bench: venv
	$(BIN)/python -m benchmarks

build: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sam build

# Deployment artifacts for every region of samconfig.toml, without AWS (see devicepipe_tools/package.py).
package: build
	$(BIN)/python -m devicepipe_tools.package

clean:
	-$(BIN)/devicepipe local down
	rm -rf .aws-sam dist .pytest_cache .mypy_cache .ruff_cache .local .venv-checkov

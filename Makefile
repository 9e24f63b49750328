# The two commands of README.md: `make run` (pipeline) and `make test` (test suite).
# Both create the environment first when it is missing or stale.
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env run test
env:
	@bash scripts/setup_env.sh

run: env
	dvc repro

test: env
	python -m pytest -q $(PYTEST_ARGS)

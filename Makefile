# The two commands of README.md: `make run` (pipeline) and `make test` (test suite).
# Both create the environments first when missing or stale: .venv (training stack) and .venv-triton (the Triton
# server's own numpy<2 environment); `make test` also .venv-llm (an OpenAI-compatible LLM server the tests serve the
# teacher's HTTP backend with).
SHELL := /bin/bash
VENV ?= .venv
# DVC remote for `dvc push` / `dvc pull`: a local folder by default; any DVC URL works (s3://..., gs://...).
RELKD_DVC_REMOTE ?= $(HOME)/.cache/relkd/dvc-remote
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env remote run test
env:
	@bash scripts/setup_env.sh
	@bash scripts/setup_server_env.sh

# Kept in .dvc/config.local (git-ignored): each machine or CI job names its own remote.
remote: env
	@dvc remote add --local --default --force storage "$(RELKD_DVC_REMOTE)" >/dev/null

run: env remote
	dvc repro

test: env
	@bash scripts/setup_llm_server_env.sh
	python -m pytest -q $(PYTEST_ARGS)

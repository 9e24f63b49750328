#!/usr/bin/env bash
# Creates (or refreshes) the Triton server's own Python environment; a no-op when it is up to date.
#
# The server runs apart from the training venv, as the Triton container would: the python backend
# stub of the pip-bundled tritonserver breaks under numpy 2 (see STACK.md), while the training stack
# needs numpy 2. nvidia-pytriton's own dependencies pin numpy<2. No torch here: model.py runs ONNX.
# The stamp holds a hash of this script, so a changed pin reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${RELKD_TRITON_VENV:-.venv-triton}
stamp="$VENV/.relkd-stamp"
want=$(sha256sum scripts/setup_server_env.sh | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/triton-backends/python/triton_python_backend_stub" ]; then
  exit 0
fi
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != "3.11" ]; then
  echo "[setup-server] needs Python 3.11 (the bundled backend stub is built for it), got $ver from $PY; set PYTHON=python3.11" >&2
  exit 1
fi
echo "[setup-server] creating $VENV with $($PY --version)"
rm -f "$stamp"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime==1.32.0" "tokenizers==0.23.3" "numpy<2"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bundle="$site/pytriton/tritonserver"
# A backend directory of our own: the bundled python backend plus the stub built for Python 3.11.
backends="$VENV/triton-backends"
rm -rf "$backends.tmp"
mkdir -p "$backends.tmp"
cp -r "$bundle/backends/python" "$backends.tmp/python"
cp "$bundle/python_backend_stubs/3.11/triton_python_backend_stub" "$backends.tmp/python/"
rm -rf "$backends"
mv "$backends.tmp" "$backends"
"$VENV/bin/python" -c 'import numpy, onnxruntime, tokenizers; assert numpy.__version__ < "2", numpy.__version__'
echo "$want" > "$stamp"
echo "[setup-server] $VENV ready (tritonserver: $bundle/bin/tritonserver)"

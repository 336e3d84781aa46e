#!/usr/bin/env bash
# Install paramgolf into the active Python environment.
# torch is installed only when none is present, so a CUDA build you already have is kept;
# on a machine without torch, TORCH_SPEC (default torch==2.13.0) is installed first.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  "$PY" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -e ".[dev]"

#!/usr/bin/env bash
# Install paramgolf into the active Python environment.
# torch is installed only when none is present (TORCH_SPEC, default torch==2.13.0: a CPU build
# from this machine's wheel store, the matching CUDA build elsewhere). A torch you already have,
# e.g. a CUDA build, is pinned while the package installs, so pip can never replace it.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
# Read the version from the package metadata: importing torch before numpy is installed
# prints "Failed to initialize NumPy".
TORCH_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
echo "install.sh: using torch ${TORCH_VERSION}"
pin="$(mktemp)"
trap 'rm -f "$pin"' EXIT
echo "torch==${TORCH_VERSION}" > "$pin"
"$PY" -m pip install -c "$pin" -e ".[dev,brotli]"

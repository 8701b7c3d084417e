#!/usr/bin/env bash
# Create (idempotently) the Python venv used to regenerate / cross-check the reference fixtures
# (tests/reference/make_model_fixtures.py), on top of Debian's python3-torch.
#
#   scripts/ref_venv.sh [VENV_DIR]      default VENV_DIR: <repo>/.venv-ref (git-ignored)
#
# Prints the venv's python path on the last line, e.g.
#   PY=$(scripts/ref_venv.sh | tail -n1) && "$PY" tests/reference/make_model_fixtures.py
# A fast no-op when the venv already imports torch and has the pinned versions.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-$ROOT/.venv-ref}
SYS_PY=/usr/bin/python3
# The exact versions the committed fixtures were generated with (huggingface_hub decides shard layout).
PINS=(transformers==4.46.3 tokenizers==0.20.3 safetensors==0.8.0 huggingface_hub==0.36.2)
APT_PKGS=(python3-torch python3-venv python3-numpy python3-sentencepiece)

venv_ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "${PINS[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import numpy, torch  # noqa: F401  (from the system site-packages)
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PY
}

if venv_ready; then
  echo "$VENV/bin/python"
  exit 0
fi

# 1. System torch (Debian python3-torch 1.13) + venv support.
if ! "$SYS_PY" -c 'import torch, numpy, ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${APT_PKGS[@]}" || { apt-get update && apt-get install -y "${APT_PKGS[@]}"; }
  else
    echo "error: $SYS_PY cannot import torch/numpy/venv. As root run:" >&2
    echo "  apt-get install -y ${APT_PKGS[*]}" >&2
    exit 1
  fi
fi

# 2. The venv (re-running venv on an existing dir keeps its packages and fixes pyvenv.cfg).
"$SYS_PY" -m venv --system-site-packages "$VENV"

# 3. Pinned Hugging Face packages (torch/numpy come from the system).
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PINS[@]}"

if ! venv_ready; then
  echo "error: $VENV was set up but does not import torch with ${PINS[*]}" >&2
  exit 1
fi
echo "$VENV/bin/python"

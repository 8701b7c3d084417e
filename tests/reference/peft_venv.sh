#!/usr/bin/env bash
# Create (idempotently) the venv for the LoRA interop checks: scripts/ref_venv.sh's venv (Debian's python3-torch
# 1.13 + the pinned transformers 4.46.3 / tokenizers / safetensors / huggingface_hub) plus PEFT.
#
#   tests/reference/peft_venv.sh [VENV_DIR]     default VENV_DIR: <repo>/.venv-peft
#
# Prints the venv's python path on the last line. Exit status 77 (ctest's "skipped") when the venv is missing
# and PyPI cannot be reached; any other failure is an error.
#
# peft 0.13.2 is the newest release whose code runs on torch 1.13 with transformers 4.46.3. It and accelerate
# are installed with --no-deps: their metadata asks for torch >= 1.13.0, which Debian's "1.13.0a0" does not
# satisfy, so pip would otherwise download a 2 GB torch 2.x. Their other requirements (numpy, packaging,
# psutil, pyyaml, tqdm) come from Debian's system packages; Jinja2 is what PEFT's save_pretrained uses to
# write the adapter's README (model card).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${1:-$ROOT/.venv-peft}
PEFT_PINS=(peft==0.13.2 accelerate==1.0.1 Jinja2==3.1.4 MarkupSafe==2.1.5)

ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "${PEFT_PINS[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import torch, peft, transformers  # noqa: F401
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PY
}

pypi_unreachable() {
  local py="$VENV/bin/python"
  [ -x "$py" ] || py=/usr/bin/python3
  ! "$py" -m pip index versions peft >/dev/null 2>&1
}

if ready; then
  echo "$VENV/bin/python"
  exit 0
fi

# One creator at a time (ctest runs tests in parallel). The "*" .gitignore keeps the venv out of git status.
mkdir -p "$VENV"
[ -f "$VENV/.gitignore" ] || printf '*\n' > "$VENV/.gitignore"
exec 9>"$VENV/.lock"
flock 9
if ready; then
  echo "$VENV/bin/python"
  exit 0
fi

if ! bash "$ROOT/scripts/ref_venv.sh" "$VENV" >&2 ||
   ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "${PEFT_PINS[@]}" >&2; then
  if pypi_unreachable; then
    echo "SKIP: PyPI is unreachable, so the venv with peft cannot be created ($VENV)" >&2
    exit 77
  fi
  echo "error: could not create $VENV with ${PEFT_PINS[*]}" >&2
  exit 1
fi
if ! ready; then
  echo "error: $VENV was set up but does not import torch, transformers and ${PEFT_PINS[*]}" >&2
  exit 1
fi
echo "$VENV/bin/python"

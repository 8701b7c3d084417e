#!/usr/bin/env bash
# Create (idempotently) the venv for the PaddleNLP interop checks (tests/reference/paddle_interop.py): a plain
# venv (no system site-packages, no torch) with paddlepaddle 3.0.0 (CPU), paddlenlp 2.8.1 and every dependency
# pinned in tests/reference/paddle_requirements.txt.
#
#   tests/reference/paddle_venv.sh [VENV_DIR]     default VENV_DIR: <repo>/.venv-paddle
#
# Prints the venv's python path on the last line. Exit status 77 (ctest's "skipped") when the venv is missing
# and PyPI cannot be reached; any other failure is an error.
#
# The pins are the set found to work together: newer huggingface_hub / datasets / aistudio-sdk / pyarrow / numpy
# break `import paddlenlp` 2.8.1. A stamp file holding the requirements' checksum makes the ready check fast:
# importing paddle takes ~10 s, so it is imported once, after installing, not on every call.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${1:-$ROOT/.venv-paddle}
REQ="$ROOT/tests/reference/paddle_requirements.txt"
STAMP="$VENV/.paddle_requirements.sha256"
WANT=$(sha256sum "$REQ" | cut -d' ' -f1)

ready() {
  [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] &&
    "$VENV/bin/python" - "$REQ" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        if version(name) != want:
            sys.exit(1)
PY
}

pypi_unreachable() {
  local py="$VENV/bin/python"
  [ -x "$py" ] || py=python3
  ! "$py" -m pip index versions paddlenlp >/dev/null 2>&1
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

rm -f "$STAMP"
if ! python3 -m venv "$VENV" >&2 ||
   ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" >&2; then
  if pypi_unreachable; then
    echo "SKIP: PyPI is unreachable, so the venv with paddlenlp cannot be created ($VENV)" >&2
    exit 77
  fi
  echo "error: could not create $VENV with $REQ" >&2
  exit 1
fi
# The one slow check: the pinned set imports, and PaddleNLP's Llama and LoRA load.
if ! "$VENV/bin/python" -c 'import paddle, paddlenlp.transformers, paddlenlp.peft, safetensors' >&2; then
  echo "error: $VENV was set up from $REQ but does not import paddle and paddlenlp" >&2
  exit 1
fi
echo "$WANT" > "$STAMP"
if ! ready; then
  echo "error: $VENV was set up but its packages differ from $REQ" >&2
  exit 1
fi
echo "$VENV/bin/python"

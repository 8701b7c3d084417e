#!/usr/bin/env bash
# The official openai Python client against `oar serve` (tests/reference/openai_client_test.py). The client is
# installed from PyPI, pinned, into a venv in the build tree (kept between runs); the test is skipped (77) only
# when pip cannot reach PyPI.
set -euo pipefail
mkdir -p "$WORK"; cd "$WORK"
die() { echo "FAIL: $*"; exit 1; }
PINS=(openai==1.109.1 httpx==0.28.1)
VENV="$WORK/venv-openai"
PY="$VENV/bin/python"

if ! "$PY" -c 'import openai, sys; sys.exit(openai.__version__ != "1.109.1")' 2>/dev/null; then
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  if ! "$PY" -m pip install -q --disable-pip-version-check "${PINS[@]}" > pip.log 2>&1; then
    # Skip only when PyPI is out of reach; any other install failure is a failure.
    if ! "$PY" -m pip index versions openai --disable-pip-version-check >/dev/null 2>&1; then
      echo "SKIP: pip cannot reach PyPI, so the official openai client cannot be installed"
      exit 77
    fi
    cat pip.log
    die "pip install ${PINS[*]} failed although PyPI is reachable"
  fi
fi

M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
"$OAR" serve --model_name_or_path "$M" --host 127.0.0.1 --port 0 --served_model_name tiny >serve.out 2>serve.err &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
  URL=$(grep -o 'http://127.0.0.1:[0-9]*' serve.out 2>/dev/null || true)
  [ -n "$URL" ] && break
  kill -0 $PID 2>/dev/null || { cat serve.err; die "oar serve exited before listening"; }
  sleep 0.1
done
[ -n "$URL" ] || die "oar serve did not start listening"

"$PY" "$SRC/tests/reference/openai_client_test.py" "$URL" tiny || { tail -5 serve.err; die "openai client checks"; }
kill -TERM $PID
wait $PID || die "oar serve exited $? after SIGTERM"

#!/usr/bin/env bash
# The official openai Python client against `oar serve` (tests/reference/openai_client_test.py). The client is
# installed from PyPI, pinned, into a venv in the build tree (kept between runs); the test is skipped (77) only
# when pip cannot reach PyPI. The server requires an API key (OAR_API_KEY): the client sends it as OpenAI does,
# and a wrong key is the client's AuthenticationError.
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
export OAR_TEST_API_KEY="sk-oar-test-$$"
OAR_API_KEY="$OAR_TEST_API_KEY" "$OAR" serve --model_name_or_path "$M" --host 127.0.0.1 --port 0 --served_model_name tiny >serve.out 2>serve.err &
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
grep -q "API key required" serve.out || die "oar serve did not take OAR_API_KEY"

"$PY" - "$URL" <<'PY' || die "a wrong API key must be the client's AuthenticationError (401)"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
try:
    c.models.list()
    sys.exit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", (e.status_code, e.code)
print("ok: a wrong API key -> AuthenticationError 401 invalid_api_key")
PY

"$PY" "$SRC/tests/reference/openai_client_test.py" "$URL" tiny || { tail -5 serve.err; die "openai client checks"; }
kill -TERM $PID
wait $PID || die "oar serve exited $? after SIGTERM"

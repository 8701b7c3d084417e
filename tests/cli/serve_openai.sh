#!/usr/bin/env bash
# The official openai Python client against `oar serve` (tests/reference/openai_client_test.py). The client is
# installed from PyPI, pinned, into a venv in the build tree (kept between runs); the test is skipped (77) only
# when pip cannot reach PyPI. The server requires an API key (OAR_API_KEY): the client sends it as OpenAI does,
# and a wrong key is the client's AuthenticationError.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
VENV="$WORK/venv-openai"
PY="$VENV/bin/python"
pip_venv "$VENV" openai openai==1.109.1 httpx==0.28.1

M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
export OAR_TEST_API_KEY="sk-oar-test-$$"
OAR_API_KEY="$OAR_TEST_API_KEY" start_server serve --model_name_or_path "$M" --served_model_name tiny
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
stop_server serve

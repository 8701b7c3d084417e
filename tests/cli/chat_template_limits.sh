#!/usr/bin/env bash
# Hostile chat templates against `oar serve` (a tiny random model whose tokenizer_config.json carries the
# template): a 20,000-filter chain is refused at start (exit 2, one line naming tokenizer_config.json and the
# nesting limit) instead of crashing the server at the first request; two nested range(100000) loops get a 400
# (chat_template_budget_exceeded) in seconds, the server stays healthy and SIGTERM still stops it.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"

"$OAR" create-model --preset tiny --dtype float32 --output_dir base --force >/dev/null

# with_template DIR TEMPLATE: a copy of the tiny model whose tokenizer_config.json has that chat template.
with_template() {
  rm -rf "$1"; cp -r base "$1"
  python3 - "$1/tokenizer_config.json" "$2" <<'PY'
import json, sys
path, template = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
cfg["chat_template"] = template
json.dump(cfg, open(path, "w"))
PY
}

# 1. Refused when loaded.
chain="{{ messages[0].content$(python3 -c 'print("|trim" * 20000, end="")') }}"
with_template chain "$chain"
set +e
timeout 120 "$OAR" serve --model_name_or_path chain --host 127.0.0.1 --port 0 >chain.out 2>chain.err  # a regression would serve for ever
rc=$?
set -e
[ "$rc" = 2 ] || { cat chain.err; die "a 20,000-filter template: exit $rc, want 2"; }
[ "$(wc -l <chain.err)" = 1 ] || { cat chain.err; die "want one line on stderr"; }
grep -q 'tokenizer_config.json.*nested too deeply: more than 200 levels' chain.err || { cat chain.err; die "error text"; }
grep -q 'listening' chain.out && die "it listened"
echo "ok: a 20,000-filter chain is refused at start: $(cat chain.err)"

# 2. Over budget at render time: 400, quickly; the server goes on.
with_template loops '{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}'
start_server loops --model_name_or_path loops
python3 - "$URL" <<'PY' || die "budget checks"
import http.client, json, re, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
def request(method, path, body=None):
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out
for attempt in range(2):
    t0 = time.time()
    status, data = request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    took = time.time() - t0
    err = json.loads(data)["error"]
    assert status == 400, (status, data)
    assert err["code"] == "chat_template_budget_exceeded", err
    assert re.search(r"render budget exceeded: more than 4000\d+ evaluation steps", err["message"]), err
    assert took < 30, took  # about 0.5 s of CPU: generous for a loaded machine
    print(f"ok: nested range(100000) loops: 400 in {took:.2f} s: {err['message']}")
status, data = request("GET", "/health")
assert status == 200, (status, data)
PY
stop_server loops
echo "ok: SIGTERM stopped it"

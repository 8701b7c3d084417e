#!/usr/bin/env bash
# oar serve end to end on a tiny random model over loopback, with the real engine: completions equal to
# `oar predict`'s greedy output, streaming that reassembles to the non-streamed text, chat, the malformed
# requests and their OpenAI error bodies, 200 concurrent requests each checked against its own expected output,
# cancellation when a client disconnects (/metrics: request aborted, blocks back), 429 on a full queue, and
# SIGTERM draining (running requests finish, new ones get 503, exit 0). Servers listen on 127.0.0.1 on a port
# the OS picks and are always stopped.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"

M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

# Expected greedy completions from the plain generation path.
printf '%s\n' '{"src": "Once upon a time"}' '{"src": "The quick brown fox"}' '{"src": "hello"}' '{"src": "1 2 3 4"}' > prompts.json
"$OAR" predict --model_name_or_path "$M" --data_file prompts.json --output_file expected.json --max_length 16 \
  --decode_strategy greedy_search --batch_size 1 >/dev/null

start_server main --model_name_or_path "$M" --max_num_seqs 16 --max_waiting 512 --served_model_name tiny
python3 - "$URL" <<'PY' || die "main server checks"
import concurrent.futures, http.client, json, socket, sys, time, urllib.parse

u = urllib.parse.urlparse(sys.argv[1])
HOST, PORT = u.hostname, u.port

def request(method, path, body=None, raw=None, timeout=300):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, r.getheader("Content-Type"), r.read()
    conn.close()
    return out

def post(path, body):
    status, _, data = request("POST", path, body)
    return status, json.loads(data)

def stream_text(path, body):
    status, ctype, data = request("POST", path, dict(body, stream=True))
    assert status == 200 and ctype == "text/event-stream", (status, ctype, data[:200])
    events = [e[len("data: "):] for e in data.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    text, finishes = "", []
    for e in events[:-1]:
        c = json.loads(e)
        for ch in c["choices"]:
            if "delta" in ch:
                text += ch["delta"].get("content") or ""
            else:
                text += ch["text"]
            if ch["finish_reason"] is not None:
                finishes.append(ch["finish_reason"])
    assert len(finishes) == 1, finishes
    return text

def metrics():
    status, _, data = request("GET", "/metrics")
    assert status == 200
    m = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#") and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            m[name.split("{")[0]] = float(value)
    return m

def wait_for(cond, what, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        m = metrics()
        if cond(m):
            return m
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what + ": " + json.dumps(metrics()))

text_of = lambda r, chat: r["choices"][0]["message"]["content"] if chat else r["choices"][0]["text"]

# /v1/models, /health
status, _, data = request("GET", "/v1/models")
assert status == 200 and json.loads(data)["data"][0]["id"] == "tiny", data
assert request("GET", "/health")[0] == 200

# Completions: greedy equals `oar predict --decode_strategy greedy_search`.
for line in open("expected.json", encoding="utf-8"):
    e = json.loads(line)
    status, r = post("/v1/completions", {"model": "tiny", "prompt": e["src"], "max_tokens": 16, "temperature": 0})
    assert status == 200, r
    assert r["object"] == "text_completion" and r["model"] == "tiny" and r["id"].startswith("cmpl-"), r
    assert r["choices"][0]["text"] == e["output"], (r["choices"][0]["text"], e["output"])
    assert r["usage"]["completion_tokens"] == len(e["output_ids"]), (r["usage"], e["output_ids"])
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    assert r["choices"][0]["finish_reason"] == ("length" if len(e["output_ids"]) == 16 else "stop")
print("ok: completions equal oar predict's greedy output")

# Streaming reassembles to the non-streamed text; chat too.
for path, body in [("/v1/completions", {"prompt": "Streaming test", "max_tokens": 24, "temperature": 0}),
                   ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Hello there!"}],
                                             "max_tokens": 24, "temperature": 0})]:
    chat = "chat" in path
    status, r = post(path, body)
    assert status == 200, r
    if chat:
        assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant", r
    assert stream_text(path, body) == text_of(r, chat)
print("ok: streamed chunks reassemble to the non-streamed text (completions and chat)")

# Malformed requests: status and OpenAI error body.
long_prompt = " ".join(["word"] * 700)
bad = [
    ("/v1/completions", b'{"prompt": "x"', 400, None),
    ("/v1/completions", b'{"prompt": "caf\xe9"}', 400, None),
    ("/v1/completions", b'[1]', 400, None),
    ("/v1/completions", json.dumps({"prompt": "x", "model": "gpt-4"}).encode(), 400, "model"),
    ("/v1/completions", json.dumps({"prompt": "x", "temperature": -1}).encode(), 400, "temperature"),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, None),
    ("/v1/completions", json.dumps({"prompt": "x", "top_p": 0}).encode(), 400, "top_p"),
    ("/v1/completions", json.dumps({"prompt": "x", "top_p": 1.5}).encode(), 400, "top_p"),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": -3}).encode(), 400, "max_tokens"),
    ("/v1/completions", json.dumps({"prompt": "x", "n": 17}).encode(), 400, "n"),
    ("/v1/completions", json.dumps({"prompt": long_prompt}).encode(), 400, "prompt"),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens"),
    ("/v1/chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}).encode(), 400, "messages"),
    ("/v1/nothing", b'{}', 404, None),
]
for path, raw, want, param in bad:
    status, ctype, data = request("POST", path, raw=raw)
    assert status == want, (path, raw[:60], status, data)
    err = json.loads(data)["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == "invalid_request_error" and "code" in err, err
    assert err["param"] == param, (raw[:60], err)
status, _, data = request("POST", "/v1/completions", raw=json.dumps({"prompt": long_prompt}).encode())
assert json.loads(data)["error"]["code"] == "context_length_exceeded"
print("ok: %d malformed requests answered with their status and an OpenAI error body" % len(bad))

# 200 concurrent requests with distinct prompts, greedy: each must get exactly its own output, which is first
# computed by sequential requests.
def job(i):
    chat = i % 4 == 0
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    text = "request %d: %s %s" % (i, words[i % 8], words[(i * 7) % 8])
    body = {"max_tokens": 4 + i % 9, "temperature": 0}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, chat

N = 200
expected = {}
for i in range(N):
    path, body, chat = job(i)
    status, r = post(path, body)
    assert status == 200, r
    expected[i] = text_of(r, chat)
assert len(set(expected.values())) > N // 2, "prompts should give varied outputs"

def run(i):
    path, body, chat = job(i)
    if i % 2:
        return i, stream_text(path, body)
    status, r = post(path, body)
    assert status == 200, r
    return i, text_of(r, chat)

before = metrics()
t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(max_workers=N) as pool:
    results = list(pool.map(run, range(N)))
elapsed = time.time() - t0
wrong = [(i, got, expected[i]) for i, got in results if got != expected[i]]
assert not wrong, wrong[:5]
after = metrics()
assert after["oar_request_success_total"] - before["oar_request_success_total"] == N, (before, after)
print("ok: %d concurrent requests (half streaming, a quarter chat) each got its own output (%.1f s)" % (N, elapsed))

# Cancellation: a streaming client that hangs up mid-stream has its request aborted and its blocks freed.
base = wait_for(lambda m: m["oar_num_requests_running"] == 0, "idle")
body = json.dumps({"prompt": "cancel me", "max_tokens": 480, "ignore_eos": True, "stream": True}).encode()
s = socket.create_connection((HOST, PORT))
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
got = b""
while b"data: " not in got:
    chunk = s.recv(4096)
    assert chunk, got
    got += chunk
assert b" 200 " in got.split(b"\r\n")[0], got[:100]
during = metrics()
assert during["oar_kv_cache_blocks_used"] > base["oar_kv_cache_blocks_used"], during
s.close()
m = wait_for(lambda m: m["oar_request_aborted_total"] == base["oar_request_aborted_total"] + 1
             and m["oar_kv_cache_blocks_used"] == base["oar_kv_cache_blocks_used"]
             and m["oar_num_requests_running"] == 0, "the disconnected request to be aborted")
assert m["oar_generation_tokens_total"] - base["oar_generation_tokens_total"] < 480, "the request ran to its end"
print("ok: a client disconnect aborts its request and frees its KV blocks (/metrics)")
for name in ["oar_time_to_first_token_seconds_count", "oar_time_per_output_token_seconds_count",
             "oar_prompt_tokens_total", "oar_generation_tokens_total", "oar_kv_cache_blocks_free",
             "oar_prefix_cache_queries_total", "oar_prefix_cache_hits_total", "oar_prefix_cache_hit_rate",
             "oar_num_requests_waiting"]:
    assert name in m, name
assert m["oar_time_to_first_token_seconds_count"] >= N
if m["oar_prefix_cache_queries_total"] > 0:
    assert abs(m["oar_prefix_cache_hit_rate"] - m["oar_prefix_cache_hits_total"] / m["oar_prefix_cache_queries_total"]) < 1e-6, m
PY
stop_server main  # idle: exits at once

# A queue of one: 429 when full. Then SIGTERM while requests run and wait: both finish, new ones get 503,
# and the server exits 0. A long context, so the two requests outlast the checks made while they run.
M="$WORK/tiny-long"
"$OAR" create-model --preset tiny --dtype float32 --max_position_embeddings 8192 --output_dir "$M" --force >/dev/null
start_server small --model_name_or_path "$M" --max_num_seqs 1 --max_waiting 1 --served_model_name tiny
python3 - "$URL" "$SERVER_PID" <<'PY' || die "full queue / drain checks"
import http.client, json, os, signal, socket, sys, time, urllib.parse

u = urllib.parse.urlparse(sys.argv[1])
HOST, PORT, PID = u.hostname, u.port, int(sys.argv[2])

def request(method, path, body=None):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=300)
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out

def metric(name):
    for line in request("GET", "/metrics")[1].decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])

def wait_metric(name, value):
    end = time.time() + 60
    while metric(name) != value:
        assert time.time() < end, "timed out waiting for %s == %s" % (name, value)
        time.sleep(0.01)

def open_stream(n):
    body = json.dumps({"prompt": "long %d" % n, "max_tokens": 8000, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    s = socket.create_connection((HOST, PORT))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return s

def read_all(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if b"data: [DONE]" in data:
            break
    s.close()
    return data

a = open_stream(1)
wait_metric("oar_num_requests_running", 1)
b = open_stream(2)
wait_metric("oar_num_requests_waiting", 1)
status, data = request("POST", "/v1/completions", {"prompt": "one too many", "max_tokens": 2})
assert status == 429, (status, data)
err = json.loads(data)["error"]
assert err["code"] == "queue_full" and err["message"], err
print("ok: a full queue answers 429 with an OpenAI error body")

os.kill(PID, signal.SIGTERM)
end = time.time() + 60
while request("GET", "/health")[0] != 503:
    assert time.time() < end, "/health never reported draining"
    time.sleep(0.005)
status, data = request("POST", "/v1/completions", {"prompt": "too late", "max_tokens": 2})
assert status == 503, (status, data)
assert json.loads(data)["error"]["code"] == "shutting_down"
for s in (a, b):
    out = read_all(s)
    assert b" 200 " in out.split(b"\r\n")[0], out[:200]
    assert b"data: [DONE]" in out, out[-300:]
    assert b'"completion_tokens":8000' in out, out[-300:]
print("ok: after SIGTERM new requests get 503 and the running and waiting requests finish")
PY
for _ in $(seq 1 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && die "oar serve still running 60 s after SIGTERM with nothing left to do"
set +e; wait "$SERVER_PID"; rc=$?; set -e
[ "$rc" -eq 0 ] || { cat small.err; die "oar serve exited $rc after draining (want 0)"; }
grep -q "draining" small.err || die "no draining message on stderr"
echo "ok: SIGTERM drained and exited 0"

# Bad flags fail before the model loads: one line, exit 2.
start_server busy --model_name_or_path "$M" --served_model_name tiny
port=${URL##*:}
set +e; "$OAR" serve --model_name_or_path "$M" --port "$port" >/dev/null 2>err.txt; rc=$?; set -e
[ $rc -eq 2 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q "$port" err.txt || { cat err.txt; die "a port in use must be one error line, exit 2"; }
set +e; "$OAR" serve --model_name_or_path "$WORK/nope" --port 0 >/dev/null 2>err.txt; rc=$?; set -e
[ $rc -eq 2 ] && grep -q "nope" err.txt || { cat err.txt; die "a missing model must be an error naming it"; }
set +e; "$OAR" serve --model_name_or_path "$M" --port 0 --cachekv_int8 --cachekv_int8_type static >/dev/null 2>err.txt; rc=$?; set -e
[ $rc -eq 2 ] && grep -q "$M/cachekv_scales.json" err.txt || { cat err.txt; die "static int8 KV without scales must name the default cachekv_scales.json"; }

# oar bench-serve against it: a bounded run reports throughput and latency percentiles.
"$OAR" bench-serve --url "$URL" --concurrency 4 --requests 12 --max_tokens 8 --prompt_len 16 --duration_s 120 > bench.txt
for k in "12 requests ok, 0 failed" "request throughput: " "output token throughput: " "time to first token: p50" "time per output token: p50"; do
  grep -q "$k" bench.txt || { cat bench.txt; die "bench-serve output lacks '$k'"; }
done
grep -q "(96 tokens)" bench.txt || { cat bench.txt; die "bench-serve: 12 requests x 8 tokens"; }
"$OAR" bench-serve --url "$URL" --concurrency 2 --requests 4 --max_tokens 4 --prompt_len 8 --json | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
assert j["requests_ok"] == 4 and j["output_tokens"] == 16 and j["ttft_p99_s"] >= j["ttft_p50_s"] > 0, j
' || die "bench-serve --json"
set +e; "$OAR" bench-serve --url "http://127.0.0.1:1" --requests 1 >/dev/null 2>err.txt; rc=$?; set -e
[ $rc -eq 2 ] || { cat err.txt; die "bench-serve against nothing must exit 2"; }
echo "ok: bench-serve reports throughput, TTFT and TPOT"
stop_server busy
echo "serve_e2e: all checks passed"

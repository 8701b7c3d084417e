#!/usr/bin/env python3
"""`oar serve` against llama.cpp's `llama-server` on the same GGUF file, driven by the same `oar bench-serve`:
concurrent streaming clients on /v1/completions (random token-id prompts, greedy, ignore_eos), aggregate output
tok/s. Rounds alternate which server runs first; the table gives medians and oar/llama-server.

Both servers get the same threads, the same number of sequences at once and room for every client's whole
context: `oar serve --max_num_seqs N` and `llama-server -t T -np N -c N*(prompt+max_tokens+16)` (continuous
batching, its default).

llama-server is not on PyPI; build it from the llama.cpp copy inside llama-cpp-python's source package:
    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/lcp && tar xzf /tmp/lcp/*.tar.gz -C /tmp/lcp
    cmake -S /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp -B /work/llama-server-build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    cmake --build /work/llama-server-build --target llama-server -j2

    python3 bench/llamacpp_serve_compare.py FILE.gguf [--oar_flags "--dtype float16"] [--clients 16] [--rounds 3]
"""
import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=600):
    """Until GET /v1/models answers 200 (llama-server answers 503 while loading)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the server was not ready in time")


def serve_and_measure(a, which):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    if which == "oar":
        cmd = [a.oar, "serve", "--model_name_or_path", a.gguf, "--port", str(port), "--max_num_seqs", str(a.clients)]
        cmd += shlex.split(a.oar_flags)
    else:
        ctx = a.clients * (a.prompt_len + a.max_tokens + 16)
        cmd = [a.llama_server, "-m", a.gguf, "--port", str(port), "-t", str(a.threads), "-tb", str(a.threads),
               "-np", str(a.clients), "-c", str(ctx), "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(port, proc)
        bench = [a.oar, "bench-serve", "--url", f"http://127.0.0.1:{port}", "--concurrency", str(a.clients),
                 "--requests", str(a.requests), "--prompt_len", str(a.prompt_len), "--max_tokens", str(a.max_tokens),
                 "--json"]
        out = subprocess.run(bench, check=True, capture_output=True, text=True).stdout
        return json.loads(out[out.index("{"):])
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf")
    p.add_argument("--oar", default=os.path.join(HERE, "..", "build", "oar"))
    p.add_argument("--llama_server", default="/work/llama-server-build/bin/llama-server")
    p.add_argument("--oar_flags", default="", help="e.g. --dtype float16 (for F16 files, as llamacpp_compare.py)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    results = {"oar": [], "llama-server": []}
    for r in range(a.rounds):
        for which in (["oar", "llama-server"] if r % 2 == 0 else ["llama-server", "oar"]):
            res = serve_and_measure(a, which)
            if res.get("requests_failed", 0) or res.get("requests_cut_off", 0):
                raise RuntimeError(f"{which}: requests failed or were cut off: {res}")
            results[which].append(res)
            print(f"round {r + 1} {which}: {json.dumps(res)}", file=sys.stderr, flush=True)
    keys = ["output_throughput", "ttft_p50_s", "tpot_p50_s"]
    print(f"{os.path.basename(a.gguf)}: {a.clients} clients, {a.requests} requests of {a.prompt_len} prompt + "
          f"{a.max_tokens} output tokens, {a.threads} threads, medians of {a.rounds}")
    print("| server | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    med = {w: {k: statistics.median(x[k] for x in results[w]) for k in keys} for w in results}
    for w in results:
        print(f"| {w} | " + " | ".join(f"{med[w][k]:.3f}" for k in keys) + " |")
    ratio = med['oar']['output_throughput'] / med['llama-server']['output_throughput']
    print(f"oar / llama-server aggregate output tok/s: {ratio:.3f}")


if __name__ == "__main__":
    main()

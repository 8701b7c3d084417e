#!/usr/bin/env bash
# Runs every benchmark program once, in sequence, on an otherwise idle machine; results go to stdout.
# Usage: bench/run_all.sh [build dir]   (build it first: scripts/build.sh release)
set -euo pipefail
B="${1:-build}"
echo "# $(date -u +%Y-%m-%d) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
for prog in bench_gemm bench_llama bench_engine bench_train; do
  if [ -x "$B/$prog" ]; then
    echo; echo "## $prog"; "$B/$prog"
  fi
done

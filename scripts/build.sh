#!/usr/bin/env bash
# Configures and builds one flavour of oar. Usage: scripts/build.sh [release|asan|fuzz]  (default release)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-release}"
jobs="${JOBS:-$(nproc)}"
case "$flavour" in
  release) cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
           cmake --build build -j "$jobs" ;;
  asan)    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOAR_SANITIZE=ON -DOAR_BENCH=OFF >/dev/null
           cmake --build build-asan -j "$jobs" ;;
  fuzz)    CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOAR_FUZZ=ON \
             -DOAR_TESTS=OFF -DOAR_BENCH=OFF >/dev/null
           cmake --build build-fuzz -j "$jobs" ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac

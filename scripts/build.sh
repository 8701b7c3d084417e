#!/usr/bin/env bash
# Configures and builds one flavour of oar. Usage: scripts/build.sh [release|asan|fuzz]  (default release)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-release}"
jobs="${JOBS:-$(nproc)}"
launcher=()  # ccache, where installed, makes rebuilds and extra build trees cheap
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
case "$flavour" in
  release) cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
           cmake --build build -j "$jobs" ;;
  asan)    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOAR_SANITIZE=ON -DOAR_BENCH=OFF "${launcher[@]}" >/dev/null
           cmake --build build-asan -j "$jobs" ;;
  fuzz)    CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOAR_FUZZ=ON \
             -DOAR_TESTS=OFF -DOAR_BENCH=OFF "${launcher[@]}" >/dev/null
           cmake --build build-fuzz -j "$jobs" ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac

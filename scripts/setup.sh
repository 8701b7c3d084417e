#!/usr/bin/env bash
# Installs every Debian package oar needs to build, test and benchmark. Idempotent: a no-op when all are there.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-dev          # libFuzzer targets and the sanitizer runtime
  libomp-dev                     # OpenMP for clang (the fuzz build); gcc's libgomp comes with build-essential
  libdnnl-dev ocl-icd-opencl-dev # oneDNN: GEMM (f32 and bf16 matmul); its CMake package config requires the OpenCL headers,
                                 # which libdnnl-dev only recommends
  libopenblas-dev libopenblas0-openmp  # OpenBLAS: only the GEMM comparison in bench/
  libsentencepiece-dev           # SentencePiece tokenizer.model
  libpcre2-dev                   # Unicode regex of byte-level BPE pre-tokenizers
  nlohmann-json3-dev             # JSON
  libcli11-dev                   # command-line parsing
  libcpp-httplib-dev             # HTTP server and client (oar serve, oar bench-serve)
  libgtest-dev                   # unit tests
  libopenmpi-dev openmpi-bin     # MPI: multi-process training (mpirun -np N oar pretrain ...)
  iproute2                       # ip netns: the two-machine MPI test
  python3 python3-venv           # fixture scripts and CLI tests; venvs for the openai client and peft checks
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Build llama-cpp-python from its PyPI source for benchmarks/peers: AVX2 kernels, plus AVX-512/VNNI
# where /proc/cpuinfo lists them (machines here differ: an Intel host with AVX-512 and AMX, an AMD EPYC
# with AVX2 only), never AMX (one sandbox faults on AMX tile instructions: a native build dies with
# SIGILL) and no -march=native. About 10 minutes on 2 cores.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
AVX512=OFF
VNNI=OFF
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then AVX512=ON; fi
if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then VNNI=ON; fi
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
 -DGGML_AVX512=$AVX512 -DGGML_AVX512_VNNI=$VNNI -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
"$PY" -m pip install --no-binary llama-cpp-python "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" "sentencepiece>=0.2"

#!/usr/bin/env bash
# Build llama-cpp-python from its PyPI source for benchmarks/peers: AVX-512/VNNI kernels, no AMX
# (this sandbox faults on AMX tile instructions: a native build dies with SIGILL), no -march=native.
# About 10 minutes on 2 cores.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
 -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
"$PY" -m pip install --no-binary llama-cpp-python "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" "sentencepiece>=0.2"

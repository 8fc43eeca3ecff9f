#!/usr/bin/env bash
# The whole test suite (real-model tests included). pytest's "no tests collected" (exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
# Lint first (pycodestyle errors + pyflakes: undefined names, unused imports/variables, redefinitions).
.venv/bin/ruff check . || { echo "ruff check failed" >&2; exit 1; }
# Two workers (pytest-xdist), a test file per worker at a time: most e2e tests wait on processes, so the two
# cores stay busy. SLMOPS_TEST_WORKERS=0 runs in one process.
workers=${SLMOPS_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"

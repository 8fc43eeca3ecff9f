# The two commands of the README. Both set everything up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-fast

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/slmops demo

test: setup
	bash scripts/test.sh

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not e2e"

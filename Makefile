# `make up`: install what is missing and run the platform in the foreground.
# `make test`: the same set-up, then the whole test suite.
.PHONY: up test setup bench

setup:
	bash scripts/setup

up: setup
	.venv/bin/bae serve

test: setup
	BAE_TEST_RESTART_DOCKERD=1 .venv/bin/pytest -ra

bench: setup
	.venv/bin/python -m bench.all

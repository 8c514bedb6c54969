# The two commands a user needs: `make demo` and `make test`. Both set up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint bench clean-lab

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/mypy src
	$(PY) -m pytest -q -ra

demo: setup
	$(PY) -m aoe.lab.demo

lint: setup
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/mypy src

bench: setup
	$(PY) tools/bench

clean-lab: setup
	$(VENV)/bin/aoe lab down --all

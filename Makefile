# bot-supervisor: `make demo` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CI's second Python: the suite runs again in its own virtualenv (scripts/python.sh finds it or installs it with pyenv).
PYTHON2 ?= 3.12
VENV2  := .venv-$(PYTHON2)

.PHONY: demo demo-clean test test-python2 test-load test-hummingbot lint check-tree unit system-deps venv bench bench-hummingbot clean

system-deps:  ## tmux, screen, git, mosquitto (apt-get when they are missing)
	@bash scripts/system-deps.sh

venv:  ## this checkout's own .venv (a copied or foreign one is made anew), with the dev group installed
	@PYTHON=$(PYTHON) bash scripts/venv.sh

demo: system-deps venv  ## three example bots in tmux, then `supervisor ls`
	@bash scripts/demo.sh

demo-clean: venv  ## stop and remove the demo bots
	@for n in demo-1 demo-2 demo-3; do $(BIN)/supervisor rm $$n --force --purge --yes 2>/dev/null || true; done

LINT_DIRS := supervisor tests scripts $(wildcard bench)

check-tree:  ## nothing tracked that .gitignore names, no shebang into one machine's folders
	@bash scripts/check-tree.sh

lint: venv check-tree
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: system-deps venv lint unit  ## installs test needs, then ruff, mypy and the whole pytest suite

test-python2: system-deps  ## the whole pytest suite again on Python $(PYTHON2), in $(VENV2)
	@py=$$(bash scripts/python.sh $(PYTHON2)) && PYTHON=$$py VENV=$(VENV2) bash scripts/venv.sh
	$(VENV2)/bin/pytest $(PYTEST_ARGS)

# The suite as a busy CI machine runs it: every core kept busy by scripts/burn.py, which stops by itself.
LOAD_SECONDS ?= 3600
test-load: system-deps venv  ## the pytest suite with every core busy (PYTEST_ARGS picks tests; LOAD_SECONDS bounds the burner)
	@$(BIN)/python scripts/burn.py --seconds $(LOAD_SECONDS) & burner=$$!; \
	$(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	kill $$burner 2>/dev/null; wait $$burner; exit $$status

# What the real-Hummingbot tests download and build lives outside the clone, so a warm run takes minutes.
BOT_SUPERVISOR_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/bot-supervisor
export BOT_SUPERVISOR_CACHE

test-hummingbot: system-deps venv  ## a real Hummingbot (PyPI sdist, Python 3.12) under supervisor, agent, fleet, dashboard
	@echo "real-Hummingbot tests; cache: $(BOT_SUPERVISOR_CACHE)"
	$(BIN)/pytest tests/hummingbot -m hummingbot -v -s $(PYTEST_ARGS)

bench: system-deps venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-hummingbot: system-deps venv  ## a real Hummingbot: first and Nth new, update of 5, start --all --wait, RSS
	$(BIN)/python bench/run.py --only hummingbot $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV2) .pytest_cache .mypy_cache .ruff_cache dist build

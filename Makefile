# Conveyor's developer entry points. Needs only Python 3.11+, make and git:
# every target that runs project code first creates (or refreshes) .venv.
#
#   make run     the whole system on this machine: broker, a worker, a batch of example tasks
#   make test    generated-code check, then the whole test suite
#   make proto   regenerate protos/conveyor/v1/*_pb2*.py(i) from the .proto files
#   make lint    ruff + mypy --strict
#   make serve   just the broker (embedded store unless CONVEYOR_REDIS_URL is set)
#   make bench   benchmarks
#   make clean   remove the virtualenv, caches and build output (keeps .conveyor/ data)

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

BIN := $(VENV)/bin
VPY := $(BIN)/python
# Touched after a successful install; older than pyproject.toml means "install again".
STAMP := $(VENV)/.conveyor-installed
MIN_PY := (3, 11)
PY_OK := import sys; sys.exit(0 if sys.version_info >= $(MIN_PY) else 1)

.DEFAULT_GOAL := help
.PHONY: help venv run test proto lint serve bench clean

# A venv whose interpreter is gone or too old (say, the Python it was made from was
# removed) is stale whatever the stamp says: drop the stamp so the next rule rebuilds it.
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(VPY) -c '$(PY_OK)' >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP))
endif
endif

help:
	@echo "make run    start a broker, a worker and a batch of example tasks (Ctrl-C stops)"
	@echo "make test   check the generated code, then run the whole test suite"
	@echo "make proto  regenerate the protobuf code"
	@echo "make lint   ruff and mypy --strict"
	@echo "make serve  run just the broker"
	@echo "make bench  benchmarks"
	@echo "make clean  remove .venv, caches and build output"
	@echo "Variables: PYTHON=$(PYTHON) (3.11+), VENV=$(VENV), PYTEST_ARGS='...'"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if ! $(VPY) -c '$(PY_OK)' >/dev/null 2>&1; then \
	  if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	    echo "error: '$(PYTHON)' not found. Install Python 3.11+ or run: make PYTHON=/path/to/python3.11 ..." >&2; \
	    exit 1; \
	  fi; \
	  if ! $(PYTHON) -c '$(PY_OK)' >/dev/null 2>&1; then \
	    echo "error: Conveyor needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) -V 2>&1)." >&2; \
	    echo "       Run: make PYTHON=/path/to/python3.11 ..." >&2; \
	    exit 1; \
	  fi; \
	  echo "creating $(VENV) with $$($(PYTHON) -V 2>&1)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV) || { \
	    echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; \
	    rm -rf $(VENV); exit 1; }; \
	fi
	@echo "installing conveyor and its dev dependencies into $(VENV)"
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-input -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/conveyor demo

serve: $(STAMP)
	$(BIN)/conveyor serve

test: $(STAMP)
	$(VPY) protos/generate.py --check
	$(VPY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

proto: $(STAMP)
	$(VPY) protos/generate.py

# Both run even when the first finds something; the target fails if either did.
lint: $(STAMP)
	@status=0; \
	echo "ruff check broker_service worker_sdk client_sdk tests protos/generate.py"; \
	$(BIN)/ruff check broker_service worker_sdk client_sdk tests protos/generate.py || status=1; \
	echo "mypy broker_service worker_sdk client_sdk"; \
	$(BIN)/mypy broker_service worker_sdk client_sdk || status=1; \
	exit $$status

# The peers (Celery, Dramatiq, huey) and matplotlib live in their own virtualenv, never in
# Conveyor's dependencies. `make bench QUICK=1` is the short run; BENCH_ARGS adds flags of
# `python -m tests.bench` (--systems, --scenarios, --runs, --server valkey...).
BENCH_VENV := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.bench-installed
BENCH_PEERS := 'celery[redis]>=5.7,<5.8' 'dramatiq[redis]>=2.2,<2.3' 'huey>=3.5,<3.6' 'redis>=5' 'matplotlib>=3.8'
QUICK ?=
BENCH_ARGS ?=

$(BENCH_STAMP):
	@test -x $(BENCH_VENV)/bin/python || { echo "creating $(BENCH_VENV) for the benchmark's peers"; \
	  $(PYTHON) -m venv $(BENCH_VENV) || { rm -rf $(BENCH_VENV); exit 1; }; }
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-input $(BENCH_PEERS)
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(VPY) -m tests.bench $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

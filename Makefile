# Two commands on a fresh Debian 12 machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SUDO_N := $(if $(SUDO),sudo -n)
STAMP := $(VENV)/.installed
QB := $(BIN)/queue-balancer

.PHONY: demo test check lint typecheck bench system-deps venv clean-local help

help:
	@echo "make demo   - install, start a local 3-node RabbitMQ cluster, seed it unbalanced, balance it"
	@echo "make test   - install, then the gate (lint, types) and every test (unit, real nodes, state machine, infra)"
	@echo "make check  - the fast gate before landing: lint, types, import rules and unit tests (no nodes)"
	@echo "make bench  - queue-balancer vs rabbitmq-queues rebalance on identical workloads"

system-deps:
	@if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! command -v shellcheck >/dev/null \
			|| [ ! -x /usr/sbin/debootstrap ]; then \
		echo "installing rabbitmq-server, shellcheck and debootstrap (RabbitMQ 4's root file system) from Debian's packages"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			rabbitmq-server shellcheck debootstrap >/dev/null; \
	fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[aws,local,cdk,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: system-deps venv
	$(QB) local up
	$(QB) local seed --queues 21 --messages 100 --type classic
	$(QB) report
	@echo "--- balancing through the state machine (the real ASL on the local AWS endpoint)"
	$(QB) run --wait
	@echo "--- the SNS notification the run published"
	$(QB) notifications
	@echo
	@echo "The local cluster and endpoint keep running: '$(QB) report', '$(QB) info', '$(QB) balance'"
	@echo "(the same engine in-process); '$(QB) local down' stops them."

PYTEST := $(PY) -m pytest -p no:cacheprovider
# Most of the suite waits on RabbitMQ (boots, syncs, a killed node noticed), not on the CPU: it runs on
# PYTEST_WORKERS pytest-xdist workers, each on its own port block, a module (or the tests sharing a CDK
# synthesis) on one worker (tests/parallel.py). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

# The RabbitMQ 4 root file system (a download, about a minute, once per machine) is built in the background
# from the first moment, next to pip and ruff; the RabbitMQ 4 tests wait on its lock if it is not done yet.
# ruff first: a lint error fails in seconds. mypy (CPU for minutes from a cold cache) then runs next to
# pytest (mostly waiting on nodes); its output is printed after pytest's and either failure fails the target.
test: system-deps
	@built=$$(mktemp); $(SUDO_N) python3 -m queue_balancer.local.rootfs >$$built 2>&1 & rootfs=$$!; \
	$(MAKE) --no-print-directory venv lint || { wait $$rootfs; rm -f $$built; exit 1; }; \
	typed=$$(mktemp); $(BIN)/mypy >$$typed 2>&1 & mypy=$$!; \
	$(PYTEST) $(PYTEST_PARALLEL) tests; code=$$?; \
	wait $$rootfs || { echo "--- the RabbitMQ 4 root file system build"; cat $$built; }; rm -f $$built; \
	wait $$mypy; typecheck=$$?; echo "--- mypy (ran next to pytest)"; cat $$typed; rm -f $$typed; \
	[ $$code -eq 5 ] && { echo "no tests collected"; exit 1; }; \
	[ $$typecheck -eq 0 ] || { echo "mypy failed"; exit $$typecheck; }; exit $$code

# ruff lint and format over the whole tree (pyproject.toml says what is checked).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy --strict over queue_balancer, lambdas, stacks, app.py, bench and tests (pyproject.toml's files).
typecheck: venv
	$(BIN)/mypy

check: lint typecheck
	$(PYTEST) -q tests/unit tests/test_quality.py

bench: system-deps venv
	$(PY) -m bench.compare

# kserve-canary developer entry points.
#
#   make test   install what is missing (venv, Debian packages), then lint, types,
#               import contracts and every test. A second run reinstalls nothing.
#   make demo   the controller on the local test bed: models promoted and rolled back, two of
#               them behind a ServiceNow approval (simulated).
#
# Everything a fresh machine needs is installed from here; nothing is assumed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two hash-pinned locks: requirements-runtime.lock is what the installed product needs (the
# image installs it alone); requirements-dev.lock is the same pins plus the development tools
# (the venv installs it). The venv is rebuilt only when a lock or the package metadata change.
LOCKS := requirements-runtime.lock requirements-dev.lock
VENV_STAMP := $(VENV)/.installed-$(shell cat $(LOCKS) pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
# Tests run in TEST_WORKERS processes (pytest-xdist). Each process that runs integration or
# e2e tests starts a test bed of its own (free loopback ports, its own directories, its own
# PostgreSQL), and every test has its own namespace and database, so tests cannot see each
# other; those tests mostly wait on the controller's timers, and two at a time halve the
# suite's wall time on 2 cores. The unit tests run after them, not beside them, so no
# CPU-bound test slows a controller whose timing an e2e test watches.
TEST_WORKERS ?= 2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests run for real. PostgreSQL's server binaries live in
# /usr/lib/postgresql/<major>/bin; the test harness starts its own private cluster.
# Prometheus is started by the test bed on a private port; openssl makes its certificates;
# headless Chromium renders the evidence report for its screenshot test.
PG_SERVER := $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres))
MISSING_DEBS := $(if $(PG_SERVER),,postgresql) \
	$(if $(wildcard /usr/bin/prometheus),,prometheus) \
	$(if $(shell command -v openssl),,openssl) \
	$(if $(wildcard /usr/bin/chromium),,chromium)
MISSING_DEBS := $(strip $(MISSING_DEBS))

.PHONY: help
help:
	@echo "make test   lint, types, import contracts and all tests (installs what is missing)"
	@echo "make demo   the controller on the local test bed: promotions, rollbacks, approvals"
	@echo "make lint | typecheck | contracts | unit | integration   the parts of make test"
	@echo "make sandbox-up | sandbox-down   the local test bed in the background"
	@echo "make bench-sandbox   time the test bed's start and stop"
	@echo "make bench-judgement   decision quality of ours vs Flagger- and Kayenta-style judges"
	@echo "make bench-audit   the audit trail at 10 million records: appends, queries, verify"
	@echo "make bench-reaction   how fast a canary that turns bad is rolled back, ours vs Flagger-style"
	@echo "make bench-scale   one controller replica at 10, 100 and 1,000 rollouts (issue #16)"
	@echo "make bench   every benchmark that writes a README block (bench-reaction, bench-scale)"
	@echo "make lock   re-resolve requirements-runtime.lock and requirements-dev.lock from pyproject.toml"

# --- installation ---------------------------------------------------------------------------

$(VENV_STAMP): $(LOCKS) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version)'
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: venv
venv: $(VENV_STAMP)

.PHONY: system-deps
system-deps:
ifneq ($(MISSING_DEBS),)
	@echo "installing Debian packages: $(MISSING_DEBS)"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(MISSING_DEBS) >/dev/null
	@ls /usr/lib/postgresql/*/bin/postgres /usr/bin/prometheus /usr/bin/chromium >/dev/null
endif
	@command -v go >/dev/null || { echo "Go (1.26 or newer) is needed to build the test bed's kube-apiserver and etcd; this machine has none" >&2; exit 1; }

# kube-apiserver, etcd and helm (for the chart's tests), compiled from Go modules once per
# machine into a cache outside the repository (several minutes the first time; a second run only checks the cache).
# `python -m testbed` is the test bed's own command line: testbed/ is development-only and
# not installed with the product, so it is found from the repository root, where make runs.
.PHONY: testbed-binaries
testbed-binaries: venv system-deps
	$(BIN)/python -m testbed build

.PHONY: deps
deps: venv system-deps testbed-binaries

# --- checks ---------------------------------------------------------------------------------

.PHONY: lint
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --failure-threshold warning deploy/Dockerfile

.PHONY: typecheck
typecheck: venv
	$(BIN)/mypy

.PHONY: contracts
contracts: venv
	$(BIN)/lint-imports

.PHONY: unit
unit: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests/unit

.PHONY: integration
integration: deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests/integration

.PHONY: test
test: deps lint typecheck contracts
	@status=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests/e2e tests/integration || status=$$?; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests/unit || status=$$?; \
	exit $$status

# --- the product on the test bed ------------------------------------------------------------

.PHONY: demo
demo: deps
	$(BIN)/python -m testbed demo

# --- benchmarks (figures go into the README) ---------------------------------------------------

.PHONY: bench-sandbox
bench-sandbox: deps
	$(BIN)/python -m bench.sandbox_startup --runs 3

.PHONY: bench-judgement
bench-judgement: venv
	$(BIN)/python -m bench.judgement --reps 1000 --curve-reps 500 --looks-reps 300

# A private PostgreSQL with 10 million generated audit records, kept between runs under
# /var/tmp/kserve-canary-bench (KSC_BENCH_CACHE): the first run generates it, later runs measure.
.PHONY: bench-audit
bench-audit: venv system-deps
	$(BIN)/python -m bench.audit --records 10000000 --services 1000 --queries 500 --budget 40

# The test bed with one controller: canaries that turn bad at a known instant, rolled back by
# our default configuration and by a Flagger-style one of the same controller (20 each; about
# 10 minutes). `python -m bench.reaction --quick` is a smoke check that writes nothing.
.PHONY: bench-reaction
bench-reaction: deps
	$(BIN)/python -m bench.reaction --runs 20

# One controller process with 10, 100 and 1,000 rollouts in progress, each size on a fresh
# test bed (aggregate traffic): tick lag, CPU, RSS, Prometheus and apiserver requests per
# analysis interval, audit records, a restart, and queries with batching off. Writes
# bench/results/scale.* and the README's bench:scale block. PY_SPY=<path to py-spy> also
# samples the controller for 30 s after each window (its top frames go into the results).
# The simulated exporters' latency histograms have real exporters' 15 buckets;
# LATENCY_BUCKETS=fine gives them the test suite's 98 (six times the bucket series).
.PHONY: bench-scale
bench-scale: deps
	$(BIN)/python -m bench.scale --sizes 10,100,1000 $(if $(PY_SPY),--py-spy $(PY_SPY)) \
		$(if $(LATENCY_BUCKETS),--latency-buckets $(LATENCY_BUCKETS))

# `make bench` runs every benchmark below that writes a README block; each adds itself as a
# prerequisite on a line of its own (make merges the prerequisites of repeated rules).
.PHONY: bench
bench: bench-reaction
bench: bench-scale

.PHONY: sandbox-up
sandbox-up: deps
	$(BIN)/python -m testbed up

.PHONY: sandbox-down
sandbox-down: venv
	$(BIN)/python -m testbed down

# --- maintenance ----------------------------------------------------------------------------

# The runtime lock first; the dev lock is then resolved with it as a constraint, so every
# package the two share has the same pin (tests/unit/test_locks.py checks it). Existing pins
# are kept unless pyproject.toml asks otherwise (pip-compile --upgrade moves them).
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-find-links

.PHONY: lock
lock: venv
	$(BIN)/python -m pip install --quiet pip-tools
	$(PIP_COMPILE) -o requirements-runtime.lock pyproject.toml
	$(PIP_COMPILE) --extra dev --constraint requirements-runtime.lock \
		-o requirements-dev.lock pyproject.toml

.PHONY: clean
clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build *.egg-info

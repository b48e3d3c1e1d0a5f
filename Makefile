# Build, test and run the gVisor sandbox service. `make help` lists the targets.
# Each target sets up what it needs and is quick when that is already done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# No .pytest_cache: a clean clone stays clean.
PYTEST := $(BIN)/pytest -p no:cacheprovider
FAKE_TIERS := unit e2e contract
# faults and load start real servers (`python -m sandbox`) on loopback; image builds the
# container image (minutes the first time, cached by its inputs) and runs it with podman.
ALL_TIERS := unit contract e2e integration faults load image
BENCH_ARGS ?=

export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# apt_install(packages): install Debian packages, as root only.
define apt_install
	if [ "$$(id -u)" -ne 0 ]; then \
	    echo "make: $(1) is missing; install it as root (apt-get install $(1))" >&2; exit 1; \
	fi; \
	echo "installing $(1)"; \
	apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(1)
endef

# run_tiers(tiers, pytest args, note, strict): run the tiers that hold tests and say which ran.
# Strict (make test): a tier without tests fails, so none is left out unnoticed.
define run_tiers
	ran=""; \
	for tier in $(1); do \
	    if find "tests/$$tier" -name 'test_*.py' 2>/dev/null | grep -q .; then \
	        ran="$$ran $$tier"; \
	    elif [ -n "$(4)" ]; then \
	        echo "make: tier tests/$$tier has no tests" >&2; exit 1; \
	    else \
	        echo "==> tier $$tier has no tests yet: left out"; \
	    fi; \
	done; \
	if [ -z "$$ran" ]; then echo "make: no tier holds tests" >&2; exit 5; fi; \
	rc=0; $(PYTEST) $$(printf ' tests/%s' $$ran) $(2) || rc=$$?; \
	echo "==> tiers run:$$ran ($(3)): $$([ $$rc -eq 0 ] && echo passed || echo "FAILED, pytest exit $$rc")"; \
	exit $$rc
endef

.PHONY: help venv host rootfs postgres run cluster test-unit test require-root lint bench bench-store image lock deploy clean

help:
	@echo "make venv       .venv with the app, the SDK and sbx (client/), dev tools (re-installs when a pyproject.toml changes)"
	@echo "make host       install the pinned runsc and debootstrap (root)"
	@echo "make rootfs     build the sandbox rootfs, cached by its recipe (root)"
	@echo "make postgres   install Debian's PostgreSQL server for the tests (root; no cluster made)"
	@echo "make run        serve on 127.0.0.1:8080 (root; SANDBOX_RUNTIME=fake needs neither)"
	@echo "make cluster    PostgreSQL, a shared checkpoint folder, instances on :8081 and :8082 (root)"
	@echo "make test-unit  the fake-runtime tiers: seconds, no root"
	@echo "make test       every tier: unit contract e2e integration faults load image (root, runsc)"
	@echo "make lint       ruff and mypy"
	@echo "make bench      service latency against bare runsc (root; BENCH_ARGS='--runs 5')"
	@echo "make image      the container image, with docker or podman (root; ENGINE=podman)"
	@echo "make lock       re-pin requirements.lock and rootfs/requirements.lock with hashes"
	@echo "make deploy     gcloud run deploy to Cloud Run (PROJECT, REGION...: docs/cloud-run.md)"
	@echo "make bench-store  store latency, SQLite against PostgreSQL (a throwaway cluster)"
	@echo "make clean      remove .venv and caches (not the rootfs)"

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	    if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	        $(call apt_install,python3-venv); \
	    fi; \
	    echo "creating $(VENV)"; \
	    $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./client
	@touch $@

host:
	@scripts/install-runsc.sh

# build-rootfs.sh installs the preinstalled wheels with the venv's pip (wheels only).
rootfs: host venv
	@PIP_PYTHON=$(BIN)/python scripts/build-rootfs.sh

# The tests start throwaway clusters of Debian's server themselves (scripts/pg_cluster.py), so
# only the binaries are needed: the package is told not to make (and start) its own cluster.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    if [ "$$(id -u)" -eq 0 ]; then \
	        install -d /etc/postgresql-common/createcluster.d; \
	        echo "create_main_cluster = false" \
	            >/etc/postgresql-common/createcluster.d/gvisor-sandbox.conf; \
	    fi; \
	    $(call apt_install,postgresql); \
	fi

run: venv $(if $(filter fake,$(SANDBOX_RUNTIME)),,rootfs)
	SANDBOX_LOG_FORMAT="$${SANDBOX_LOG_FORMAT:-console}" exec $(BIN)/python -m sandbox

# Instances sharing a throwaway PostgreSQL and a checkpoint folder; Ctrl-C stops them all.
cluster: venv rootfs postgres
	$(BIN)/python scripts/cluster.py $(CLUSTER_ARGS)

test-unit: venv
	@$(call run_tiers,$(FAKE_TIERS),-m "not runsc",fake runtime; tests marked runsc deselected,)

# The runsc tiers need root; fail here rather than let them skip.
require-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
	    echo "make test: the runsc tests need root, runsc and the rootfs; run it as root" \
	         "(make test-unit runs the fake-runtime tiers without root)" >&2; \
	    exit 1; \
	fi

# The tests see SANDBOX_REQUIRE_RUNSC and fail, instead of skipping, when runsc (or
# PostgreSQL) is unusable.
test: export SANDBOX_REQUIRE_RUNSC := 1
test: require-root venv rootfs postgres
	@$(call run_tiers,$(ALL_TIERS),,fake and runsc,strict)

lint: venv
	$(BIN)/ruff check sandbox tests scripts client
	$(BIN)/mypy
	$(BIN)/mypy scripts/bench.py scripts/bench_store.py scripts/pg_cluster.py scripts/cluster.py

bench: venv rootfs postgres
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# docker where its daemon answers; otherwise podman (with runc), installed here if missing.
image: venv
	@if [ "$${ENGINE:-}" != docker ] && ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; } \
	    && ! { command -v podman >/dev/null && command -v runc >/dev/null; }; then \
	    $(call apt_install,podman runc); \
	fi
	@PIP_PYTHON=$(BIN)/python scripts/image.sh

lock:
	@scripts/lock.sh

deploy:
	@scripts/deploy.sh $(if $(DEPLOY_ARGS),-- $(DEPLOY_ARGS))
bench-store: venv postgres
	$(BIN)/python scripts/bench_store.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info \
	    client/build client/src/*.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

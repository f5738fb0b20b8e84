# apptsync: `make demo` and `make test` work on a fresh machine (they install what they need).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
INSTALLED := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo dev audit test test-long test-unit test-integration test-e2e test-fidelity fidelity lint protos containers image deploy-validate bench-resync bench-writer bench-freshness bench-change-relay bench bench-report bench-peers bench-fleet clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(INSTALLED)

## demo: start the embedded stack (no Docker) and run two real imports
demo: install
	$(BIN)/apptsync demo

## dev: the embedded stack in the foreground until Ctrl-C
dev: install
	$(BIN)/apptsync dev up

## containers: the Docker engine and the locally built test images (needs root on a fresh machine)
containers: install
	bash tests/containers/engine.sh
	PYTHON=$(BIN)/python bash tests/containers/images.sh

## lint: ruff, mypy (strict), import contracts
lint: install
	$(BIN)/ruff check services tests protos benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

## audit: known vulnerabilities of the installed dependencies (apptsync itself, editable, is skipped),
##        from PyPI's JSON API; exits non-zero on any finding and on any dependency it could not check
##        (needs pypi.org: see README "Tests" for why CI does not run it).
AUDIT_ARGS ?=
audit: install
	$(BIN)/pip-audit --vulnerability-service pypi --skip-editable --strict --progress-spinner off --timeout 10 $(AUDIT_ARGS)

## test: everything: lint, unit, integration (testcontainers) and end-to-end tests
test: install containers lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

## test-long: the same suite with the bounded fault and kill tests at their full size (more seeds and
##            longer walks than CI runs; see tests/scale.py)
test-long: install containers lint
	$(BIN)/pytest -p no:cacheprovider --long $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest -p no:cacheprovider -m unit $(PYTEST_ARGS)

test-integration: install containers
	$(BIN)/pytest -p no:cacheprovider -m integration $(PYTEST_ARGS)

test-e2e: install containers
	$(BIN)/pytest -p no:cacheprovider -m e2e $(PYTEST_ARGS)

test-fidelity: install containers
	$(BIN)/pytest -p no:cacheprovider -m fidelity $(PYTEST_ARGS)

## fidelity: the mirror-fidelity harness, 20 seeds on the embedded stack (no Docker): the shipped sync
##           schedule through every service, the mirror compared with the simulator's truth; a table,
##           then one JSON line. One seed: make fidelity FIDELITY_ARGS='--seeds 7'
FIDELITY_ARGS ?=
fidelity: install
	$(BIN)/python tests/fidelity/run.py $(FIDELITY_ARGS)

## image: the container image apptsync:dev (builds its local base with debootstrap when needed)
image: containers
	bash deploy/scripts/build-image.sh

## deploy-validate: render deploy/k8s overlays, schema-validate for Kubernetes 1.31, checkov with zero failures
deploy-validate:
	bash deploy/scripts/validate.sh

## bench: end to end on the embedded stack: 100,000 appointments through gateway, fetcher, broker and
##        writer, re-sync p50/p95, peak RSS per service, a 1,000,000-appointment job, legacy and COPY floor
bench: install
	mkdir -p bench-results
	nice -n 10 $(BIN)/python benchmarks/bench_e2e.py --output bench-results/e2e.txt

## bench-resync: StartImport -> SUCCEEDED latency of an up-to-date tenant's re-sync (p50/p95 of 20 runs)
bench-resync: install
	mkdir -p bench-results
	$(BIN)/python benchmarks/bench_resync.py --runs 20 | tee bench-results/resync.txt

## bench-freshness: provider change -> row latency with webhooks on (p50/p95/max over 200 changes, forged
##                  notifications sent meanwhile), then the polling reconciliation's catch-up with notifications dropped
bench-freshness: install
	mkdir -p bench-results
	nice -n 10 $(BIN)/python benchmarks/bench_freshness.py | tee bench-results/freshness.txt

## bench-writer: the writer on 100,000 rows against the legacy algorithm and the COPY floor
bench-writer: install
	mkdir -p bench-results
	$(BIN)/python benchmarks/bench_writer.py | tee bench-results/writer.txt

## bench-change-relay: events/s the writer's change relay publishes from the outbox (gzip and none)
bench-change-relay: install
	mkdir -p bench-results
	$(BIN)/python benchmarks/bench_change_relay.py | tee bench-results/change-relay.txt

## bench-peers: apptsync and dlt's REST API source (its own venv, .venv-peers) on the same simulator data and
##              durable PostgreSQL, 3 interleaved rounds, Calendly and Acuity: first load, unchanged full
##              re-run, re-run after 5% changes; last line JSON (dlt wall / apptsync wall, medians)
PEERS_VENV := .venv-peers
PEERS_ARGS ?=
$(PEERS_VENV)/.installed-dlt:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet 'dlt[postgres]>=1.31,<2'
	touch $@

bench-peers: install $(PEERS_VENV)/.installed-dlt
	mkdir -p bench-results
	set -o pipefail; nice -n 10 $(BIN)/python benchmarks/peers/bench_peers.py --dlt-python $(PEERS_VENV)/bin/python $(PEERS_ARGS) \
		| tee bench-results/peers.txt

## bench-fleet: 1,000 small tenants (FLEET_ARGS='--tenants 100 --result-name fleet-100' for the growth point)
##              synced by sync-all rounds under the providers' real limits; last line JSON (tenants,
##              round_seconds, tenant_done_p95_seconds, bottleneck)
FLEET_ARGS ?=
bench-fleet: install
	mkdir -p bench-results
	set -o pipefail; nice -n 10 $(BIN)/python benchmarks/bench_fleet.py $(FLEET_ARGS) | tee bench-results/fleet.txt

## bench-report: the README's figures table (between <!-- bench:begin --> and <!-- bench:end -->) from the
##               result files the benchmarks wrote (bench-results/*.json); formatting only
bench-report: install
	$(BIN)/python benchmarks/report.py --results bench-results --readme README.md

## protos: regenerate the Python bindings after editing protos/
protos: install
	$(BIN)/python protos/generate.py

clean:
	rm -rf .apptsync .mypy_cache .ruff_cache .pytest_cache

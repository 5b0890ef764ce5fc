# The two commands of the README: `make run` and `make test`.
CARGO ?= cargo
CONF ?= conf/gantry.toml

.PHONY: run test deps lint bench load

## Build (release) and run the gateway on conf/gantry.toml.
run: deps
	$(CARGO) run --release -- -c $(CONF)

## Every check CI runs: formatting, clippy, unit and integration tests.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## Install missing build tools (cmake) or say how.
deps:
	@scripts/ensure-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Criterion micro-benchmarks (router matching, metrics and access-log records).
bench:
	$(CARGO) bench --bench router --bench observability

## Load test: Gantry vs nginx against the same upstream (installs nginx and wrk if missing).
load: deps
	benches/load.sh

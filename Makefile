# The two commands of the README: `make run` and `make test`.
CARGO ?= cargo
CONF ?= conf/gantry.toml

.PHONY: run test deps lint bench load fuzz

## Build (release) and run the gateway on conf/gantry.toml.
run: deps
	$(CARGO) run --release -- -c $(CONF)

## Every check CI runs: formatting, clippy, unit and integration tests.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## The property tests of `make test` with many more cases (FUZZ_CASES=N to change it), in the
## debug build `make test` already made (a release build is a long fat-LTO link).
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p gantry --test props
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p gantry --lib props
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p gantry-plugins --lib props

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

# Corral: `make demo` shows it working, `make test` proves it. Both install what is missing.
SHELL := /bin/bash
export CORRAL_CACHE ?= $(CURDIR)/.cache
CARGO ?= cargo
BIN := $(CURDIR)/target/debug/corral

.PHONY: all setup build guest demo test bench clean lab-down

all: build

setup:
	@bash scripts/setup.sh
	@bash scripts/setup-schemathesis.sh

build: setup
	@$(CARGO) build --quiet --workspace --bins

guest: setup
	@bash scripts/build-guest.sh
	@bash scripts/build-debian.sh

demo: build guest
	@bash scripts/demo.sh

test: setup guest
	@$(CARGO) test --workspace --no-fail-fast

bench: setup guest
	@bash bench/run.sh

lab-down:
	@$(BIN) lab down

clean:
	$(CARGO) clean
	rm -rf $(CORRAL_CACHE)

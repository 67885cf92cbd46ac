# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit deps clean bench bench-smoke bench-ice bench-relay bench-relay-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,fast]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/icerelay serve

# Debian packages for the interop tests (coturn, nftables, ...); only when root, only what is missing.
deps:
	PYTHON=$(PYTHON) scripts/install-debian-deps

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/sim

# deps first: on a fresh Debian machine it also provides python3-venv for the .venv.
test: deps lint
	$(BIN)/pytest -q -n 2

# TURN benchmark, icerelay vs coturn (needs gcc and coturn; not part of `make test`).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.turn

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.turn --smoke

# ICE benchmark, icerelay's agent vs aioice (namespace setups need root; not part of `make test`).
bench-ice: $(STAMP)
	$(BIN)/python -m benchmarks.ice

# Media relay benchmark, icerelay vs rtpengine 10.5 userspace (needs gcc and rtpengine-daemon;
# ~8 min; rewrites benchmarks/relay/REPORT.md + report.json). The smoke run takes < 1 min.
bench-relay: $(STAMP)
	$(BIN)/python -m benchmarks.relay

bench-relay-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.relay --smoke

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit deps clean bench bench-smoke bench-ice bench-relay bench-relay-smoke bpf

# The TURN offload's eBPF object (issue 13), built from source with Debian's clang and
# libbpf-dev (uapi headers only: no kernel headers, no vmlinux.h). Without clang the build
# says so and goes on: `[turn] offload = "auto"` then runs without the offload.
BPF_SRC := src/icerelay/dataplane/bpf/turn_offload.bpf.c
BPF_OBJ := src/icerelay/dataplane/bpf/turn_offload.bpf.o
CLANG ?= clang

$(BPF_OBJ): $(BPF_SRC)
	@if command -v $(CLANG) >/dev/null 2>&1 && test -f /usr/include/bpf/bpf_helpers.h; then \
		$(CLANG) -O2 -g -Wall -Werror -target bpf \
			-I/usr/include/$$($(CLANG) -print-multiarch) -c $(BPF_SRC) -o $@; \
	else \
		echo "turn offload: clang or libbpf-dev missing, $@ not built (offload stays off)"; \
	fi

bpf: $(BPF_OBJ)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,fast]'
	touch $(STAMP)
	$(MAKE) --no-print-directory bpf

run: $(STAMP) bpf
	$(BIN)/icerelay serve

# Debian packages for the interop tests (coturn, nftables, ...); only when root, only what is missing.
deps:
	PYTHON=$(PYTHON) scripts/install-debian-deps

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

unit: $(STAMP) bpf
	$(BIN)/pytest -q tests/unit tests/sim

# deps first: on a fresh Debian machine it also provides python3-venv for the .venv.
test: deps lint bpf
	$(BIN)/pytest -q -n 2

# TURN benchmark, icerelay vs coturn (needs gcc and coturn; not part of `make test`).
bench: $(STAMP) bpf
	$(BIN)/python -m benchmarks.turn

bench-smoke: $(STAMP) bpf
	$(BIN)/python -m benchmarks.turn --smoke

# ICE benchmark, icerelay's agent vs aioice (namespace setups need root; not part of `make test`).
bench-ice: $(STAMP)
	$(BIN)/python -m benchmarks.ice

# Media relay benchmark, icerelay vs rtpengine 10.5 userspace (needs gcc and rtpengine-daemon;
# ~8 min; rewrites benchmarks/relay/REPORT.md + report.json). The smoke run takes < 1 min.
# As root it runs in a private network namespace with a relay port range of 20000-59999, so the
# steps reach the load generator's limit instead of stopping at the port range (issue 12).
bench-relay: $(STAMP)
	$(BIN)/python -m benchmarks.relay $$(test "$$(id -u)" = 0 && echo --netns)

bench-relay-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.relay --smoke

clean:
	rm -rf $(VENV) build $(BPF_OBJ) src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

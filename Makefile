# gatesmith: the two commands of the README, plus the gated slow tier.
#   make demo   set up (once) and run a GEMM on the Verilator-simulated accelerator
#   make test   set up (once) and run the default test tier (what CI runs)
#   make slow   the slow tier: bitstream builds, large sweeps
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gatesmith run --config examples/demo.yaml --m 256 --k 256 --n 256

test: $(STAMP)
	$(BIN)/pytest -q -n 2 --durations=15

slow: $(STAMP)
	$(BIN)/pytest -q -m slow --durations=15

.PHONY: setup demo test slow

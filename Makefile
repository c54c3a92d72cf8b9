# Two commands:  `make run` (set up + CPU quickstart)  and  `make test` (set up + tests).
# Both are idempotent: the setup step is skipped when .venv is already up to date.
# The inner loop: `make test-fast` (set up + the tests not marked slow, under a minute on 2 cores).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
OUT    ?= runs/quickstart

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

# torch goes in first, pinned by constraints.txt, so no later requirement can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,lora,gym]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/iprime quickstart --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest

# algo, config, data, the verifiers' unit tests...: everything tests/conftest.py does not mark slow
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/generation.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# --- GPU: `make setup-gpu` (.venv-gpu with vLLM and the CUDA torch it pins), `make gpu-check` ---
# Never part of `setup`/`run`/`test`. vLLM goes in first and chooses torch; the torch it brought is
# then frozen into constraints-gpu.txt, and iprime is installed under that file, so no requirement
# can replace vLLM's torch (the CPU pin in constraints.txt is not used here). docs/scaling.md.
GPU_VENV  := .venv-gpu
GPU_PY    := $(GPU_VENV)/bin/python
GPU_PIP   := $(GPU_PY) -m pip --disable-pip-version-check
GPU_STAMP := $(GPU_VENV)/.installed
VLLM      ?= vllm==0.33.0
GPU_PYTHON ?= $(PYTHON)
GPU_OUT   ?= runs/gpu_check

.PHONY: setup-gpu gpu-check

setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml
	$(GPU_PYTHON) -c "import sys; assert sys.version_info >= (3, 11), 'vLLM 0.33 needs Python >= 3.11: make setup-gpu GPU_PYTHON=python3.11'"
	test -x $(GPU_PY) || $(GPU_PYTHON) -m venv $(GPU_VENV)
	$(GPU_PIP) install -q "$(VLLM)"
	printf '%s\n' "# Written by 'make setup-gpu': the torch that $(VLLM) installed (do not edit; rerun it)." \
		"# Used by .venv-gpu only; the CPU setup pins torch with constraints.txt." > constraints-gpu.txt
	$(GPU_PIP) freeze | grep -iE '^(vllm|torch|torchaudio|torchvision)==' | LC_ALL=C sort >> constraints-gpu.txt
	grep -q '^torch==' constraints-gpu.txt
	$(GPU_PIP) install -q -c constraints-gpu.txt -e ".[dev,lora,vllm]"
	$(GPU_PY) -c "import torch, vllm, iprime; assert torch.version.cuda, 'torch is a CPU build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| vllm', vllm.__version__, '| iprime', iprime.__version__)"
	touch $(GPU_STAMP)

gpu-check: $(GPU_STAMP)
	$(GPU_PY) benchmarks/gpu_check.py --out $(GPU_OUT)

# Two commands:  `make run` (set up + CPU quickstart)  and  `make test` (set up + tests).
# Both are idempotent: the setup step is skipped when .venv is already up to date.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
OUT    ?= runs/quickstart

.PHONY: setup run test lint bench clean

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/generation.py

clean:
	rm -rf $(VENV) runs .pytest_cache

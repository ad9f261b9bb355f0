# Two commands for a new user (README): `make demo` and `make test`.
# Each creates the virtual environment on first use. torch is installed first and explicitly:
# a bare `torch` requirement with no torch present would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[opensmile,dev,ssl,server]"
	touch $@

demo: setup
	$(BIN)/ser demo
	$(BIN)/ser run configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check ser_pipeline feature_store flows tests

bench: setup
	$(BIN)/ser bench featurize

clean:
	rm -rf ser-data .pytest_cache

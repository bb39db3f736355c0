# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv if needed, install Fashion-MNIST from Debian when missing, install the CPU
# build of torch first (so pip never pulls a CUDA build), then unirobust with its test extras
# (corruptions; peft for LoRA stages; text: transformers, tokenizers, peft and datasets, so the
# text tests run). peft pulls accelerate, whose torch requirement the CPU build already meets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP := $(VENV)/.unirobust-installed

.PHONY: demo test lint bench setup clean-venv

setup: $(STAMP) $(FMNIST)

$(FMNIST):
	@if [ ! -f $(FMNIST) ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,corruptions,lora,text]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/unirobust demo

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py

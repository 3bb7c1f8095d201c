# `make test` and `make demo` set everything up on a fresh machine: .venv is created or
# refreshed whenever pyproject.toml changes. torch is pinned first so pip takes the CPU
# wheel on disk (an unpinned torch would pull gigabytes of CUDA libraries).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0
EXTRAS := export,align,openvino,serve,video,dev

.PHONY: test demo venv clean cpp-example gpu-check

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# mypy first (the files and strictness pyproject.toml names): a type error fails the target before the tests run.
test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/psp-deploy demo

# The C++ consumer of a bundle (examples/cpp/README.md): linked to .venv's onnxruntime; headers already on the
# machine are used, missing ones fetched from the Debian archive into build/cpp, never installed.
cpp-example: $(STAMP)
	examples/cpp/build.sh $(PY) build/cpp

# The GPU check on a machine with an NVIDIA GPU and onnxruntime-gpu (benchmarks/gpu_check.py, steps printed as they
# run): the installed $(PYTHON) and its torch, never the .venv (whose torch is the CPU wheel) and nothing installed.
# Writes benchmarks/results/<gpu>.{json,md} and plots; exits 2, saying why, on a machine that cannot run it.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) demo build .pytest_cache

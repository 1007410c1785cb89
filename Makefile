# The two set-up commands of a fresh machine (README):  make demo   |   make test
# Both create .venv inside the clone on first use and reinstall only when the packaging changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# DeepSpeed's JIT-built ops are cached inside the clone as well.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: demo test test-all bench-smoke clean

$(STAMP): pyproject.toml setup.py constraints/cpu.txt $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	@# The CPU torch wheel first: nothing afterwards may swap in a CUDA build.
	$(PIP) -c constraints/cpu.txt torch
	$(PIP) -c constraints/cpu.txt -e '.[test]'
	@# The eval protocol's oracle; its imports are in the test extra (pyproject.toml).
	$(PIP) -c constraints/cpu.txt --no-deps lmms-eval==0.7.3
	touch $@

demo: $(STAMP)
	$(VENV)/bin/tpo-fast demo configs/demo.yaml

# TPO_FAST_REQUIRE_ORACLES: an outside oracle that does not import fails its tests instead of
# skipping them (the eval protocol tests). `make test` (README, CI) leaves out the tests marked
# `slow` (each repeats a path a default test covers, at a higher cost); `make test-all` runs all.
PYTEST := TPO_FAST_REQUIRE_ORACLES=1 $(PY) -m pytest -q --durations=15
# Two pytest-xdist workers: on the 2-core machine most of the suite is process start-up and
# Python, which two workers overlap (tests/conftest.py gives each one torch thread).
test: $(STAMP)
	$(PYTEST) -m "not slow" -n 2

test-all: $(STAMP)
	$(PYTEST)

bench-smoke: $(STAMP)
	$(PY) -m benchmarks.packing --smoke

clean:
	rm -rf $(VENV) build .cache tpo_fast/_C*.so

# The README's two commands: `make quickstart` (the main job, end to end on bundled data) and `make test`.
# Both set up their own virtual environment on a fresh machine. torch is pinned to the build served locally.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: setup quickstart test bench bench-quick clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(PY) -m train.quickstart --output_dir outputs/quickstart

test: setup
	$(PY) -m pytest -q tests

# Regenerates BENCHMARKS.md and docs/*.png (full sizes: <= 30 min on 2 cores; quick: <= 5 min).
bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

clean:
	rm -rf outputs .pytest_cache

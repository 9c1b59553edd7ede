# The README's two commands: `make quickstart` (the main job, end to end on bundled data) and `make test`.
# Both set up their own virtual environment on a fresh machine. torch is pinned to the build served locally.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: setup browser quickstart test bench bench-quick clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(PY) -m train.quickstart --output_dir outputs/quickstart

# Debian's chromium for the demo's browser test, installed where apt-get can (as root). Never fails the run:
# without chromium, tests/test_demo.py skips its browser test and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "make browser: chromium could not be installed; the browser test will be skipped"; \
	fi

test: setup browser
	$(PY) -m pytest -q tests

# Regenerates BENCHMARKS.md and docs/*.png (full sizes: <= 30 min on 2 cores; quick: <= 5 min).
bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

clean:
	rm -rf outputs .pytest_cache

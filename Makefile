# The README's two commands: `make quickstart` (the main job, end to end on bundled data) and `make test`.
# Both set up their own virtual environment on a fresh machine, from the committed lock (requirements.lock), so
# every machine resolves the same versions. torch is pinned to the build served locally.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: setup lock browser quickstart test test-compat test-peer test-serve bench bench-quick bench-real bench-serve clean

$(VENV)/.installed: setup.cfg pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Re-resolves every dependency to the newest release the registry serves (torch stays pinned) and rewrites the
# lock. Run it to upgrade, then `make test test-compat test-peer` before committing the new requirements.lock.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q $(TORCH_PIN)
	.lock-venv/bin/pip install -q -e ".[dev]"
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	rm -rf .lock-venv

quickstart: setup
	$(PY) -m train.quickstart --output_dir outputs/quickstart

# Debian's chromium for the demo's browser test, installed where apt-get can (as root). Outside CI a failed install
# only skips that test (tests/test_demo.py says why); under CI=true the test then fails.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "make browser: chromium could not be installed; the browser test will be skipped (fails under CI=true)"; \
	fi

test: setup browser
	$(PY) -m pytest -q --durations=15 tests

# Hub users' environments without this project: the supported floor, 5.17, the lock and the newest releases
# (venvs cached under ~/.cache/sigphi-compat); prints a version x check table.
test-compat: setup
	$(PY) -m tests.compat.matrix

# transformers' own common model and processor tests, run against tiny SigPhi (locked and newest transformers).
test-peer: setup
	$(PY) -m tests.peer.run

# The quickstart's SigPhi folder served by vLLM's CPU build (its own venv, cached under ~/.cache/sigphi-serve):
# offline batch, OpenAI-compatible server, teacher data with --backend vllm, each against transformers' answers.
test-serve: setup
	$(PY) -m tests.serve.run

# Regenerates BENCHMARKS.md and docs/*.png (full sizes: <= 30 min on 2 cores; quick: <= 5 min).
bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

# README's real-size recipe at real shapes with random weights (<= 60 min on 2 cores; not part of CI).
bench-real: setup
	$(PY) -m bench.real_size

# vLLM against transformers `generate` on the same folders (BENCHMARKS.md section 13; ~10 min on 2 cores).
bench-serve: setup
	$(PY) -m bench.serving

clean:
	rm -rf outputs .pytest_cache

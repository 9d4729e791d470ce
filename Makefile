# `make demo` trains the demo end to end on embedded data (`make demo-long`: two-object scenes too); `make test` runs
# the test suite. All build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-long test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(PY) scripts/demo.py

demo-long: install
	$(PY) scripts/demo.py --long

test: install
	WANDB_MODE=offline $(PY) -m pytest tests

bench: install
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) benchmarks/bench_autoencoder.py

clean:
	rm -rf $(VENV) logs

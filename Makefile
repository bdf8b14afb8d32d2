# Two commands do all set-up on a fresh machine:
#   make demo   -> installs stmorph and runs the demo on the embedded synthetic tissue (outputs in ./stmorph_demo)
#   make test   -> installs stmorph with its test extras and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel (any other spec may pull gigabytes of CUDA packages).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= stmorph_demo

.PHONY: install install-test demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/stmorph demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -n 2 --dist loadfile -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

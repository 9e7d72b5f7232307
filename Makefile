# Two entry points: `make demo` (the repair demo on the embedded model and data) and
# `make test` (the test suite). Both create .venv on first use; torch is pinned to the CPU build
# by constraints.txt (an unpinned torch pulls a CUDA build of several GB).
VENV ?= .venv
PIP := $(VENV)/bin/pip

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.installed
	$(VENV)/bin/qnnrepair demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

# docs/report.png: the HTML report of a tiny repair, screenshot by headless Chromium
.PHONY: report-png
report-png: $(VENV)/.installed
	QNNREPAIR_WRITE_SCREENSHOT=1 $(VENV)/bin/python -m pytest -q tests/test_html_report.py -k chromium

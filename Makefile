# `make demo` and `make test` each work on a fresh clone: they create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint format clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: on our machines pip then takes the local CPU wheel instead of a CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[dev,bench,ui,ray,masks,quant]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/regionedit demo --out demo-out

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

# Debian's chromium for the web UI's browser test; without root + apt that test skips.
browser:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
			|| echo "make browser: could not install chromium; the browser test will skip"; \
	else \
		echo "make browser: no /usr/bin/chromium and no root + apt; the browser test will skip"; \
	fi

test: lint browser
	$(VENV)/bin/pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf demo-out .pytest_cache .ruff_cache

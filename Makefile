# Learning Machine. `make up` sets up and starts everything; `make test` runs the whole test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
# uv from PATH, else the one `make install` puts in the user's site-packages.
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
UV_VERSION := 0.13.9
RUN := $(UV) run --frozen

.PHONY: help install browsers checkov promtool up down status test test-fast lint format bench bench-quick clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## Install uv (if missing) and the locked dependencies, every extra (docs/install.md), into .venv
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)"
	$(UV) sync --frozen --all-extras

browsers: ## Debian's Chromium and ChromeDriver for the browser tests (Playwright drives them; no download)
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
		else echo "install Debian's chromium and chromium-driver (as root: apt-get install chromium chromium-driver)"; exit 1; fi; }

checkov: ## checkov and kubernetes-validate in their own locked environment (tools/checkov/.venv), for the chart tests
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)"
	cd tools/checkov && $(UV) sync --frozen

promtool: ## Prometheus's promtool for the chart tests: taken from Debian's prometheus package into .lm/tools (nothing installed, no service started)
	@if [ -x .lm/tools/promtool ] || command -v promtool >/dev/null 2>&1; then exit 0; fi; \
	command -v apt-get >/dev/null || { echo "promtool needs Debian's prometheus package (apt-get download prometheus)"; exit 1; }; \
	rm -rf .lm/tools/deb && mkdir -p .lm/tools/deb && cd .lm/tools/deb && \
	{ apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } && \
	dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool ../promtool && cd .. && rm -rf deb && ./promtool --version | head -n1

up: install ## Start MLflow (and every other service) in the background; train a first model if none
	$(RUN) lm up

down: ## Stop every process `make up` started
	@if [ -x .venv/bin/lm ]; then $(RUN) lm down; else echo "nothing installed, nothing to stop"; fi

status: ## Each service, its URL and health
	$(RUN) lm status

lint: install ## Ruff, the import contracts (pyproject.toml) and mypy on the package
	$(RUN) ruff check .
	$(RUN) lint-imports
	$(RUN) mypy

format: install ## Apply ruff's fixes
	$(RUN) ruff check --fix .

test: install browsers checkov promtool lint ## Lint, then every test (real MLflow, PostgreSQL, S3 servers started by fixtures)
	$(RUN) pytest

test-fast: install checkov promtool ## Tests without the slow end-to-end ones
	$(RUN) pytest -m "not slow"

bench: install ## Full benchmarks: report in bench-results/
	$(RUN) lm bench --out bench-results

bench-quick: install ## Quick benchmarks (minutes): report in bench-results/quick
	$(RUN) lm bench --quick --out bench-results/quick

clean: down ## Remove local state (.lm), caches and reports
	rm -rf .lm bench-results .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache

# fleetdeck: `make demo` runs the product on its embedded default, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: demo demo-express express-app test stop venv lint bench status node-helper

venv: $(VENV)/.requirements-installed

# requirements.txt pins everything; the editable install then adds the `fleetdeck` package and console script
# without touching those pins (--no-deps: pyproject.toml's dependencies are the same pins).
$(VENV)/.requirements-installed: requirements.txt pyproject.toml
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: venv
	scripts/ensure-system-packages.sh demo
	./fleetdeck up

# The Express sample app's node_modules, from its pinned lockfile (nodejs and npm come from Debian).
EXPRESS_APP := compose/expressapp
express-app: $(EXPRESS_APP)/node_modules/.package-lock.json

$(EXPRESS_APP)/node_modules/.package-lock.json: $(EXPRESS_APP)/package-lock.json
	cd $(EXPRESS_APP) && npm ci --no-audit --no-fund --loglevel=error

demo-express: venv
	scripts/ensure-system-packages.sh demo-express
	$(MAKE) express-app
	./fleetdeck --config $(EXPRESS_APP)/fleet.yaml up

stop:
	./fleetdeck down

status:
	./fleetdeck status

test: venv
	scripts/ensure-system-packages.sh test
	$(MAKE) node-helper
	$(MAKE) express-app
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -m fast
	$(PYTHON) -m pytest -m integration

# Node BullMQ for the queue tests (tests/test_queue_node.py), exactly as pinned in tests/node/package-lock.json
node-helper: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

lint: venv
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench: venv
	for bench in bench/bench_*.py; do echo "== $$bench"; PYTHONPATH=. $(PYTHON) $$bench || exit 1; done

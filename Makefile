# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= deploy/pixelsync.example.toml

.PHONY: run test lint typecheck pytest bench soak faults clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/pixelsync serve --config $(CONFIG)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/ruff check service tests bench

# Checked as 3.11 and as 3.13 code: each sees the branches of its own sys.version_info.
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --python-version 3.13

pytest: $(VENV)/.installed
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed
	@command -v wrk >/dev/null 2>&1 || { \
	    SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q wrk \
	    || { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q wrk; }; \
	} || echo 'make bench: could not install wrk (apt-get install wrk)'
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	    SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nginx-light \
	    || { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nginx-light; }; \
	} || echo 'make bench: no nginx (apt-get install nginx-light): its ceiling is left out'
	$(PY) -m bench $(BENCH_ARGS)

# Issue 9's long forms (docs/reliability.md); `make test` runs them short.
soak: $(VENV)/.installed
	$(PY) -m bench.faults soak $(SOAK_ARGS)

faults: $(VENV)/.installed
	for drill in outage crash shutdown cluster; do $(PY) -m bench.faults $$drill || exit 1; done

clean:
	rm -rf $(VENV) .venv-3.* var .pytest_cache .mypy_cache .ruff_cache

# Two set-up commands (README.md): `make quickstart` runs the main job, `make test` runs the tests.
# Both create .venv and install the project with the pinned versions in constraints.txt on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/quickstart

.PHONY: install quickstart test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test]" -c constraints.txt
	touch $@

quickstart: install
	USS_JAX=$(VENV)/bin/uss-jax launch/quickstart.sh $(WORKDIR)

test: install
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup --durations=30 tests

clean:
	rm -rf $(VENV) workdirs

# fedssl: the two commands of the README.
#   make demo   create .venv, install, run the default federated simulation, print the table
#   make test   create .venv, install, ruff, the fast test suite (unit + doctests; < 5 min on 2 cores)
#   make test-all  make test, then the slow end-to-end tests (Ray simulations, real SuperLinks)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# CPU wheel of torch lies on this disk; pin it first so no CUDA build is pulled in.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test test-slow test-all lint bench clean install bench-pfl-env

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) -c constraints.txt torch==2.13.0
	$(PIP) install -q $(FIND_LINKS) -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedssl simulate --config simulations/configs/demo.toml --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: test test-slow

# pfl-research for benchmarks/simulation.py's pfl rows, in its own environment: pfl 0.6 pins
# dp-accounting<0.6, fedssl's audit needs 0.6. Its packages come first, then .venv's.
PFL_VENV := .venv-pfl
bench-pfl-env: $(STAMP)
	test -x $(PFL_VENV)/bin/python || $(PYTHON) -m venv $(PFL_VENV)
	$(PFL_VENV)/bin/python -m pip install -q --no-deps -r benchmarks/pfl-requirements.txt
	$(PY) -c "import site; print(\"import site; site.addsitedir('\" + site.getsitepackages()[0] + \"')\")" \
	  > "$$($(PFL_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_fedssl_venv.pth"
	$(PFL_VENV)/bin/python -c "import pfl, fedssl, torch; print('pfl', pfl.__version__ if hasattr(pfl, '__version__') else '0.6', 'ready')"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(PFL_VENV) runs .pytest_cache .ruff_cache .hypothesis *.egg-info

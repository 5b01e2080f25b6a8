# The two commands of the README: `make serve` and `make test`. Each sets itself up on
# a fresh clone (a virtualenv in .venv with the examples and test extras) and reuses
# that set-up afterwards; a change to pyproject.toml or constraints.txt reinstalls.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# The four examples behind one ingress; `make serve CONFIG=deployments/<name>.yaml` serves one.
CONFIG ?= deployments/showcase.yaml

.PHONY: install serve test

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing inferencesh_ray with its examples and test extras into $(VENV) (log: $(VENV)/install.log)..."
	@$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e ".[examples,test]" \
		> $(VENV)/install.log 2>&1 || (tail -n 30 $(VENV)/install.log; exit 1)
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "installed."

# `serve run` of the config, on a private loopback Ray (no dashboard) that stops with it.
serve: $(STAMP)
	$(PY) -m inferencesh_ray.local_ray $(VENV)/bin/serve run $(CONFIG)

# pytest exits 5 when a selection holds no tests: that is not a failure of the suite.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

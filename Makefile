# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   - venv + packages, then a simulated day at the inner-mongolia-mine site with a report
#   make test   - venv + packages + Debian test peers (mosquitto, socat), then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMS    := $(VENV)/bin/edge-ems
DEBS   := mosquitto socat tmux

.PHONY: demo test test-long install deps-debian bench clean

$(VENV)/.stamp-install: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m controller.warmup
	touch $@

install: $(VENV)/.stamp-install

deps-debian:
	@missing=""; for p in $(DEBS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

demo: install
	$(EMS) demo --out out/demo

test: install deps-debian
	$(PY) -m pytest -q -p no:cacheprovider

test-long: install deps-debian
	$(PY) -m pytest -q -p no:cacheprovider --run-slow

bench: install
	$(PY) -m tools.bench.sim
	$(PY) -m tools.bench.mpc
	$(PY) -m tools.bench.bus

clean:
	rm -rf $(VENV) out build *.egg-info

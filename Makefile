# pgops: `make lab` deploys the lab, `make test` runs lint + unit + Molecule.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB_INVENTORY := inventories/lab
LAB_GATEWAY ?= 172.29.57.1
LAB_S3_PORT ?= 9000
SCENARIOS ?= default backup cluster

.PHONY: help bootstrap lab psql lab-destroy test lint lint-sql unit molecule bench bench-payment bench-audit bench-failover bench-backup sample-data docs erd bench-security bench-layers bench-clients bench-monitoring report dashboard

help:
	@echo "make lab          deploy the lab (containers, S3 endpoint, site.yml)"
	@echo "make lab-destroy  remove the lab"
	@echo "make psql         psql as the lab's read-only user (lab_reader), over TLS"
	@echo "make test         lint + unit tests + Molecule scenarios ($(SCENARIOS))"
	@echo "make bench        converge benchmark of the lab (see bench/README.md)"
	@echo "make bench-payment  payment workload (pgbench) on the lab primary"
	@echo "make bench-audit  cost of the audit settings on the payment workload"
	@echo "make bench-failover  kill and partition trials under load, soak, switchover pause (TRIALS=10 SOAK=600)"
	@echo "make bench-backup  pgBackRest full backup vs raw upload (A B B A), logical dump, PITR restore (env SCALE)"
	@echo "make bench-security  payment workload before vs after the least-privilege API (A B B A)"
	@echo "make bench-layers  cost of each layer: stock, tuning, audit, sync replication, PgBouncer, HAProxy (SCALE=10)"
	@echo "make bench-clients  8 to 1024 clients, direct vs PgBouncer, p50/p99 latency (SCALE=10)"
	@echo "make bench-monitoring  cost of the exporters and scraping on the payment workload (A B B A)"
	@echo "make report       the lab's last hour from Prometheus as PNG plots (docs/monitoring-lab.png)"
	@echo "make dashboard    regenerate the Grafana dashboard (docs/grafana/pgops-cluster.json)"
	@echo "make sample-data  load sample data into the lab (SCALE=1)"
	@echo "make docs         regenerate docs/variables.md and the privilege matrix"
	@echo "make erd          regenerate docs/erd.* from the lab's payments database"

bootstrap:
	@bash lab/bootstrap.sh

lab: bootstrap
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml
	lab/s3.sh start $(LAB_GATEWAY) $(LAB_S3_PORT)
	ansible-playbook -i $(LAB_INVENTORY) site.yml
	@mkdir -p lab/.state
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/status.yml -e status_file=$(CURDIR)/lab/.state/status.json >/dev/null
	@python -m pgops.labsummary lab/.state/status.json

psql:
	@lab/psql.sh

lab-destroy:
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml -e lab_state=absent
	lab/s3.sh stop $(LAB_GATEWAY) $(LAB_S3_PORT)

# Every step is timed (pgops/steps.py); the table is printed at the end,
# whether the run passed or not.
STEP := python -m pgops.steps run

test: bootstrap
	@python -m pgops.steps reset
	@rc=0; $(MAKE) --no-print-directory lint unit molecule || rc=$$?; \
	  echo "== step timings"; python -m pgops.steps report; exit $$rc

lint:
	@$(STEP) lint -- bash -c 'yamllint --strict . && ansible-lint && ruff check . && ruff format --check . && $(MAKE) --no-print-directory lint-sql'

# Migrations that would lock or rewrite a hot table fail (squawk, .squawk.toml;
# the migrations applied before it are listed there as exempt, with reasons).
lint-sql:
	@out=$$(squawk sql/migrations/*.sql 2>&1) && echo "squawk: $$out" || { case "$$out" in \
	  "Failed to find files"*) echo "squawk: no migration after the exempt ones (.squawk.toml)";; \
	  *) echo "$$out"; exit 1;; esac; }

unit:
	@$(STEP) unit -- pytest -q tests

# The scenarios run side by side (their networks, instances and S3 endpoints
# are distinct): the last one streams its output, the others write to
# .cache/molecule-NAME.log, printed when they end. `cluster` is the longest;
# `default` and `backup` are over before it reaches its fault trials.
molecule:
	@test -f lab/.state/ssh/id_ed25519.pub || { echo "no lab SSH key (lab/.state/ssh): run make bootstrap first"; exit 1; }
	@mkdir -p .cache; set -- $(SCENARIOS); last=$${!#}; rc=0; \
	for s in "$$@"; do [ "$$s" = "$$last" ] && continue; echo "== molecule scenario $$s (in the background: .cache/molecule-$$s.log)"; \
	  ( $(STEP) "molecule $$s" -- molecule test -s $$s >.cache/molecule-$$s.log 2>&1; echo $$? >.cache/molecule-$$s.rc ) & done; \
	echo "== molecule scenario $$last"; $(STEP) "molecule $$last" -- molecule test -s $$last || rc=$$?; wait; \
	for s in "$$@"; do [ "$$s" = "$$last" ] && continue; echo "== molecule scenario $$s (output)"; cat .cache/molecule-$$s.log; \
	  r=$$(cat .cache/molecule-$$s.rc); [ "$$r" = 0 ] || { echo "== molecule scenario $$s FAILED"; rc=$$r; }; done; exit $$rc

SCALE ?= 1

bench: bootstrap
	bench/converge.sh

bench-payment:
	SCALE=$(SCALE) bench/payment_workload.sh pg-primary

bench-audit:
	bench/audit_cost.sh

TRIALS ?= 10
SOAK ?= 600
SWITCHOVERS ?= 3
bench-failover:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	python bench/failover.py --trials $(TRIALS) --soak $(SOAK) --switchovers $(SWITCHOVERS)

bench-backup:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	SCALE=$(SCALE) bench/backup.sh

bench-security:
	bench/security_cost.sh

bench-layers:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	SCALE=$(if $(filter command line,$(origin SCALE)),$(SCALE),10) bench/layers.sh

bench-clients:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	SCALE=$(if $(filter command line,$(origin SCALE)),$(SCALE),10) bench/clients.sh

bench-monitoring:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	bench/monitoring_cost.sh

# The lab's Prometheus (pg-monitor); the same panels as the Grafana dashboard.
LAB_PROMETHEUS ?= http://172.29.57.20:9090
report:
	@python -c 'import matplotlib' 2>/dev/null || pip install -q -r bench/requirements.txt
	python -m pgops.dashboard report $(LAB_PROMETHEUS) docs/monitoring-lab.png

dashboard:
	python -m pgops.dashboard grafana docs/grafana/pgops-cluster.json

sample-data:
	docker exec -i pg-primary runuser -u postgres -- psql -X -d payments -v scale=$(SCALE) -f - < bench/sample_data.sql

docs:
	python -m pgops.specdoc --write docs/variables.md
	python -m pgops.privileges --write docs/schema.md

erd:
	python -m pgops.erd --docker pg-primary --out docs

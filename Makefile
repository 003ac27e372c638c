# pgops: `make lab` deploys the lab, `make test` runs lint + unit + Molecule.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB_INVENTORY := inventories/lab
LAB_GATEWAY ?= 172.29.57.1
LAB_S3_PORT ?= 9000
SCENARIOS ?= default

.PHONY: help bootstrap lab lab-destroy test lint unit molecule bench docs

help:
	@echo "make lab          deploy the lab (containers, S3 endpoint, site.yml)"
	@echo "make lab-destroy  remove the lab"
	@echo "make test         lint + unit tests + Molecule scenarios ($(SCENARIOS))"
	@echo "make bench        measure the lab (see bench/README.md)"
	@echo "make docs         regenerate the README's variable tables"

bootstrap:
	@bash lab/bootstrap.sh

lab: bootstrap
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml
	lab/s3.sh start $(LAB_GATEWAY) $(LAB_S3_PORT)
	ansible-playbook -i $(LAB_INVENTORY) site.yml

lab-destroy:
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml -e lab_state=absent
	lab/s3.sh stop $(LAB_GATEWAY) $(LAB_S3_PORT)

test: bootstrap lint unit molecule

lint:
	yamllint --strict .
	ansible-lint
	ruff check .
	ruff format --check .

unit:
	pytest -q tests

molecule:
	@for s in $(SCENARIOS); do echo "== molecule scenario $$s"; molecule test -s $$s || exit 1; done

bench: bootstrap
	bench/converge.sh

docs:
	python -m pgops.specdoc --write README.md

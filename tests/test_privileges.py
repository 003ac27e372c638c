"""The privilege matrix in docs/schema.md (the README links to it) is the one
the access role applies (roles/access/vars/main.yml)."""

import json
from pathlib import Path

import yaml

from pgops import privileges

ROOT = Path(__file__).resolve().parent.parent


def test_schema_doc_shows_the_matrix_the_role_applies():
    text = (ROOT / "docs/schema.md").read_text()
    assert text == privileges.update(text, privileges.render(privileges.load())), "run `make docs`"


def test_readme_links_to_the_matrix_instead_of_copying_it():
    readme = (ROOT / "README.md").read_text()
    assert privileges.BEGIN not in readme
    assert "(docs/schema.md#who-may-do-what)" in readme


def test_readers_expand_and_columns_stay_in_brackets():
    cells = privileges.table_cells(
        {"readers": ["SELECT(id, email)"], "app": ["UPDATE(email)", "INSERT"]}, ["admin", "readonly", "app"]
    )
    assert cells["readonly"] == ["S(id, email)"]
    assert cells["app"] == ["S(id, email)", "U(email)", "I"]
    assert cells["developer"] == [] and cells["pii"] == []


def test_no_group_writes_money_audit_reference_or_credentials():
    """The guarantee docs/schema.md states, checked on the data itself."""
    data = privileges.load()
    protected = {"transaction", "idempotency_key", "transaction_state_change", "refund", "fraud_assessment",
                 "fraud_assessment_indicator", "currency", "country", "transaction_status",
                 "transaction_status_transition", "device_type", "payment_method_type", "fraud_decision",
                 "fraud_indicator"}  # fmt: skip
    credentials = {"password_hash", "token", "full_name_enc", "full_name_key_version"}
    for table, grants in data["tables"].items():
        for group, privileges_ in grants.items():
            if group == "keyholder":
                continue  # re-encrypts names (pii_reencrypt)
            writes = [p for p in privileges_ if not p.startswith("SELECT")]
            if table in protected:
                assert writes == [], (table, group)
            if table in ("customer", "customer_payment_method"):
                for p in writes:
                    columns = {c.strip() for c in p.partition("(")[2].rstrip(")").split(",")}
                    assert "(" in p and not credentials & columns, (table, group, p)


def test_the_reconciler_configuration_resolves_every_reference():
    root = privileges.ROOT / "roles/access"
    variables, defaults = (yaml.safe_load((root / f).read_text()) for f in ("vars/main.yml", "defaults/main.yml"))
    config = privileges.reconcile_config(variables, defaults)
    assert "{{" not in json.dumps(config)
    assert config["owner"] == "payments_owner" and config["groups"]["app"] == "payments_app"
    assert config["tables"]["transaction"]["readonly"] == [
        "SELECT(id, created_at, merchant_id, customer_id, payment_method_id, amount, currency, status, location_id, "
        "device_type, updated_at)"
    ]
    assert "pg_catalog.pg_advisory_lock(bigint)" in config["revoked_functions"]


def test_may_reads_table_and_column_grants():
    data = privileges.load()
    assert privileges.may(data, "app", "merchant", "UPDATE", "name")
    assert not privileges.may(data, "app", "merchant", "UPDATE")  # no table-wide UPDATE: no LOCK beyond ROW EXCLUSIVE
    assert privileges.may(data, "readonly", "transaction", "SELECT", "amount")
    assert not privileges.may(data, "readonly", "transaction", "SELECT", "client_ip")
    assert privileges.may(data, "app", "transaction", "SELECT", "client_ip")
    assert privileges.may_execute(data, "readonly", "mask_email")
    assert not privileges.may_execute(data, "admin", "authorize")

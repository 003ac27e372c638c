"""Fixtures for the schema tests: a test harness login with direct
privileges on every table (to prove the database's own rules, triggers and
constraints, hold whatever the grants), real TLS connections from the
controller, and a merchant/customer/payment method to pay with. What each
group may do is proven separately, as real group members (test_access.py,
test_attacks.py)."""

import json
import secrets
from pathlib import Path

import pytest
import yaml

from pgops.testing import connect, create_login_role, create_payer, fetch_ca, host_address, psql, run_playbook

DB = "payments"


@pytest.fixture(scope="module")
def tester(host):
    role = create_login_role(host, "schema_test")
    psql(
        host,
        f"GRANT CONNECT ON DATABASE payments TO {role.name};"
        f"GRANT USAGE ON SCHEMA payments, pgops TO {role.name};"
        f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA payments TO {role.name};"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA pgops TO {role.name};"
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA payments TO {role.name};"
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA payments TO {role.name};"
        f"GRANT USAGE ON SCHEMA partman TO {role.name};"
        f"GRANT SELECT ON partman.part_config TO {role.name};",
        db=DB,
    )
    yield role
    psql(host, f"REVOKE CONNECT ON DATABASE payments FROM {role.name}; DROP OWNED BY {role.name}", db=DB)
    psql(host, f"DROP ROLE {role.name}")


@pytest.fixture(scope="module")
def db(host, tester, tmp_path_factory):
    """A factory of autocommit connections to the payments database."""
    ca = fetch_ca(host, tmp_path_factory.mktemp("ca"))
    address = host_address(host)
    opened = []

    def open_connection(autocommit=True):
        conn = connect(address, tester, ca, dbname=DB, autocommit=autocommit)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()


@pytest.fixture(scope="module")
def payer(db):
    """A merchant, a customer and the customer's card token."""
    return create_payer(db(), "user", "correct horse battery staple", "Jeanne Testeuse")


@pytest.fixture
def authorize(db, payer):
    """Authorize a payment; returns (id, created_at, status, replayed)."""

    def run(amount=1000, currency="EUR", key=None, score=0.1, conn=None, **overrides):
        args = {
            "merchant": payer["merchant"],
            "key": key or secrets.token_hex(8),
            "customer": payer["customer"],
            "method": payer["method"],
            "amount": amount,
            "currency": currency,
            "ip": "198.51.100.7",
            "device": "mobile",
            "score": score,
            **overrides,
        }
        return (
            (conn or db())
            .execute(
                "SELECT * FROM payments.authorize(%(merchant)s::bigint, %(key)s, %(customer)s::bigint, "
                "%(method)s::bigint, %(amount)s::bigint, %(currency)s::char(3), %(ip)s::inet, %(device)s, "
                "%(score)s::numeric, 'model-1', ARRAY['new_device'])",
                args,
            )
            .fetchone()
        )

    return run


@pytest.fixture
def captured(db, authorize):
    """Authorize and capture a payment; returns (id, created_at)."""

    def run(amount=1000):
        txn_id, created_at, status, _ = authorize(amount=amount)
        assert status == "authorized"
        db().execute("SELECT payments.capture(%s, %s, %s, 'test')", (txn_id, created_at, secrets.token_hex(8)))
        return txn_id, created_at

    return run


@pytest.fixture
def refund(db):
    """Refund through payments.refund() with a fresh idempotency key (or the one given)."""

    def run(txn_id, created_at, amount, reason="customer request", key=None, conn=None, on_behalf_of="support"):
        return (
            (conn or db())
            .execute(
                "SELECT payments.refund(%s, %s, %s, %s, %s, %s)",
                (txn_id, created_at, amount, reason, key or secrets.token_hex(8), on_behalf_of),
            )
            .fetchone()[0]
        )

    return run


@pytest.fixture(scope="session", autouse=True)
def fresh_security_report(tmp_path_factory):
    """The security audit report of the freshly converged server, taken before
    any test plants anything (every finding down to `low` fails the run)."""
    report = tmp_path_factory.mktemp("report") / "report.json"
    run = run_playbook(
        "playbooks/security_audit.yml", {"security_audit_fail_on": "low", "security_audit_report_file": str(report)}
    )
    return run, json.loads(report.read_text()) if report.exists() else None


@pytest.fixture(scope="session")
def project_vars():
    """A role's private vars (roles/<role>/vars/main.yml), as the project states them."""

    def load(role):
        return yaml.safe_load((Path(__file__).resolve().parents[3] / f"roles/{role}/vars/main.yml").read_text())

    return load

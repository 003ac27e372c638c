"""Fixtures for the cluster scenario's suites, which share one converged
3-member cluster and run in the order ORDER sets, each leaving the cluster as
the next expects: schema, access and audit first, then the operations as AWX
runs them, monitoring, and the fault trials last (they move the leader). The
backup scenario proves backups and restores on a cluster of its own.

`host` is the current leader, as Patroni says, for every module that does not
name its hosts. The schema fixtures: a test harness login with direct
privileges on every table (to prove the database's own rules, triggers and
constraints hold whatever the grants), real TLS connections from the
controller, and a merchant/customer/payment method to pay with. What each
group may do is proven separately, as real group members (test_access.py,
test_attacks.py)."""

import json
import secrets
from pathlib import Path

import pytest
import yaml

from pgops import faults, fixtures
from pgops.faults import wait_until
from pgops.testing import (  # noqa: F401 (the suites import these from here)
    S3_CA,
    LoginRole,
    bucket_keys,
    create_payer,
    member,
    repo_info,
    run_playbook,
    wait_archived,
)

# The members and their addresses (molecule.yml).
NODES = {"cluster1": "172.29.62.10", "cluster2": "172.29.62.11", "cluster3": "172.29.62.12"}
NETWORK = "pgops-molecule-cluster"
S3_ENDPOINT = "https://172.29.62.1:9001"

# One login per group (molecule.yml access_users), and one in no group.
USERS = {
    "admin": LoginRole("m_admin", "molecule-admin-password"),
    "developer": LoginRole("m_developer", "molecule-developer-password"),
    "readonlyuser": LoginRole("m_reader", "molecule-reader-password"),
    "payments_app": LoginRole("m_app", "molecule-app-password-01"),
    "pii_reader": LoginRole("m_pii", "molecule-pii-password-01"),
}
PLAIN = LoginRole("m_plain", "molecule-plain-password-1")

# Module order: what each leaves behind is what the next expects. A module
# not listed runs after the listed ones that come before "test_ha".
ORDER = [
    "test_integrity",
    "test_partitions",
    "test_access",
    "test_attacks",
    "test_audit",
    "test_security_report",
    "test_erd",
    "test_operations",
    "test_monitoring",
    "test_replication",
    "test_ha",
]


TTL = 20  # patroni_ttl (roles/patroni/defaults)
HEALTHY_WITHIN = 120


def members(ca, among=None):
    return faults.members(among or NODES.values(), ca)


def leader_of(ca, among=None):
    return faults.leader_in(members(ca, among))


def healthy(ca):
    """Every member streaming from one leader, and every standby back in the
    synchronous quorum (a trial that starts before a returning standby has
    rejoined it would test another topology)."""
    try:
        view = members(ca)
    except AssertionError:  # no member answered
        return False
    return faults.is_healthy(view, len(NODES)) and all(m["role"] in ("leader", "quorum_standby") for m in view.values())


def wait_healthy(ca, timeout=HEALTHY_WITHIN):
    wait_until(lambda: healthy(ca), timeout, "a leader and two streaming replicas")
    return leader_of(ca)


cluster_ca, leader_name, host = fixtures.cluster_ca, fixtures.leader_name, fixtures.host
nodes, s3, member_whose_turn, physical_backup = fixtures.scenario(NODES, S3_ENDPOINT)
tester, db = fixtures.tester, fixtures.db


def pytest_collection_modifyitems(items):
    def rank(item):
        name = Path(str(item.fspath)).stem
        return ORDER.index(name) if name in ORDER else ORDER.index("test_ha") - 0.5

    items.sort(key=rank)  # stable: a module keeps its own order


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

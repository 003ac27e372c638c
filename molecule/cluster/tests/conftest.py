"""Fixtures for the cluster scenario's suites, which share one converged
3-member cluster and run in the order ORDER sets, each leaving the cluster as
the next expects: schema, access and audit first, then backups, replication,
and the fault trials last (they move the leader).

`host` is the current leader, as Patroni says, for every module that does not
name its hosts. The schema fixtures: a test harness login with direct
privileges on every table (to prove the database's own rules, triggers and
constraints hold whatever the grants), real TLS connections from the
controller, and a merchant/customer/payment method to pay with. What each
group may do is proven separately, as real group members (test_access.py,
test_attacks.py)."""

import json
import os
import secrets
import time
from pathlib import Path

import boto3
import pytest
import testinfra
import yaml

from pgops import faults, fixtures
from pgops.faults import wait_until
from pgops.testing import (
    LoginRole,
    create_payer,
    fetch_ca,
    patroni_leader,
    psql,
    run_playbook,
)

# The members and their addresses (molecule.yml).
NODES = {"cluster1": "172.29.62.10", "cluster2": "172.29.62.11", "cluster3": "172.29.62.12"}
NETWORK = "pgops-molecule-cluster"
S3_ENDPOINT = "https://172.29.62.1:9001"
# The lab-only CA lab/s3.sh signed the endpoint's certificate with.
S3_CA = str(Path(__file__).resolve().parents[3] / "lab/.state/s3-ca.crt")

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
    "test_pii_rotation",
    "test_security_report",
    "test_erd",
    "test_backup",
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


tester = fixtures.tester
db = fixtures.db


def pytest_collection_modifyitems(items):
    def rank(item):
        name = Path(str(item.fspath)).stem
        return ORDER.index(name) if name in ORDER else ORDER.index("test_ha") - 0.5

    items.sort(key=rank)  # stable: a module keeps its own order


def member(name):
    """A member's testinfra host, by inventory name."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="session")
def cluster_ca(tmp_path_factory):
    """The cluster CA, for clients on the controller (Patroni's REST API, PostgreSQL)."""
    return fetch_ca(member("cluster1"), tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="module")
def leader_name(cluster_ca):
    """The leader as Patroni says when the module starts."""
    return patroni_leader(NODES.values(), cluster_ca)


@pytest.fixture(scope="module")
def host(leader_name):
    """The leader's host (this replaces testinfra's per-host `host`)."""
    return member(leader_name)


@pytest.fixture(scope="session")
def s3():
    """The scenario's S3 endpoint (moto on the network's gateway), as a client."""
    return boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="molecule-only-access-key",
        aws_secret_access_key="molecule-only-secret-key",
        verify=S3_CA,
    )


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


def repo_info(host) -> dict:
    """pgBackRest's view of the stanza (info --output=json), from a member."""
    out = host.run("runuser -u postgres -- pgbackrest --stanza=payments --output=json info")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)[0]


def physical_backup(kind: str) -> str:
    """A pgBackRest backup of KIND taken as its timer takes it, on the member
    whose turn it is; returns that member's name."""
    turn = member_whose_turn()
    started = member(turn).run(f"systemctl start pgops-pgbackrest-{kind}.service")
    assert started.rc == 0, member(turn).run(f"journalctl -u pgops-pgbackrest-{kind} -n 30 --no-pager").stdout
    return turn


def member_whose_turn() -> str:
    """What pgops-pgbackrest answers on the first member that answers."""
    errors = []
    for name in NODES:
        out = member(name).run("runuser -u postgres -- /usr/local/sbin/pgops-pgbackrest turn")
        if out.rc == 0:
            return out.stdout.strip()
        errors.append(f"{name}: {out.stderr.strip()}")
    raise AssertionError(f"no member says whose turn it is: {errors}")


def wait_archived(host, timeout: float = 60) -> None:
    """Switch WAL and wait until the segment is in the archive."""
    segment = psql(host, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    psql(host, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while psql(host, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < deadline, "WAL was not archived"
        time.sleep(1)

"""Upgrading a database deployed before the least-privilege migrations: a
database at V0012 with the grants of that time (admin a member of the owner,
writers with DML everywhere) and payments made through the old API gets the
new migrations and grants from the roles, with no rebuild; its data and its
idempotency keys survive (an old key still replays), and a re-run changes
nothing."""

import hashlib
import subprocess
from pathlib import Path

import pytest

from pgops.testing import psql, recap_changed, run_playbook

DB = "upgrade_probe"
MIGRATIONS = Path(__file__).resolve().parents[3] / "sql/migrations"
LEDGER = """
CREATE SCHEMA IF NOT EXISTS pgops;
CREATE TABLE pgops.schema_migration (
    version integer PRIMARY KEY, name text NOT NULL UNIQUE, checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), applied_by text NOT NULL DEFAULT current_user,
    duration_ms integer NOT NULL)
"""
# The access role's configuration as V0009's reconciler took it.
OLD_ACCESS = (
    '{"schema": "payments", "owner": "payments_owner", "admin": "admin", "developer": "developer", '
    '"readonly": "readonlyuser", "app": "payments_app", "pii": "pii_reader", "backup": "backup", '
    '"monitoring": "monitoring", "audit_tables": ["transaction_state_change", "refund", "fraud_assessment", '
    '"fraud_assessment_indicator"], "pii_functions": ["payments.pii_decrypt(bytea,integer)"], '
    '"definer_functions": ["payments.pii_key(integer)", "payments.pii_encrypt(text)", '
    '"payments.pii_decrypt(bytea,integer)", "payments.pii_reencrypt(integer)"]}'
)
OLD_PAYMENT = """
SET pgops.pii_key_dir = '/etc/postgresql/pgops-pii'; SET pgops.pii_key_version = '1';
INSERT INTO payments.merchant (name, country_code, default_currency) VALUES ('old shop', 'FR', 'EUR');
SELECT payments.create_customer('old_customer', 'old password 12345', 'old@example.test', 'Olga Oldtimer');
INSERT INTO payments.customer_payment_method (customer_id, method_type, token)
VALUES (1, 'card', 'tok_old_0123456789abc');
SELECT payments.authorize(1, 'old-key', 1, 1, 4200::bigint, 'EUR', NULL, 'desktop', 0.1::numeric, 'model-1');
SELECT payments.capture(id, created_at, 'old-api') FROM payments.transaction;
"""


@pytest.fixture(scope="module")
def old_database(host):
    """A database as the project left it at V0012, with a paid transaction."""
    psql(host, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(host, f"CREATE DATABASE {DB}")
    psql(host, LEDGER, db=DB)
    settings = (
        "SET pgops.partition_interval = '1 month'; SET pgops.partition_premake = '4';"
        "SET pgops.partition_start = '2026-01-01';"
    )
    for path in sorted(MIGRATIONS.glob("V*.sql")):
        version = int(path.name[1:5])
        if version > 12:
            break
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        subprocess.run(
            ["docker", "exec", "-i", host.backend.host, "sh", "-c", "umask 022 && cat > /var/tmp/upgrade.sql"],
            input=f"{settings}\n{sql}\n",
            text=True,
            check=True,
        )
        applied = host.run(f"runuser -u postgres -- psql -XAtq -1 -v ON_ERROR_STOP=1 -d {DB} -f /var/tmp/upgrade.sql")
        assert applied.rc == 0, f"{path.name}: {applied.stderr}"
        psql(host, f"INSERT INTO pgops.schema_migration (version, name, checksum, duration_ms) "
             f"VALUES ({version}, '{path.name}', '{checksum}', 0)", db=DB)  # fmt: skip
    host.run("rm -f /var/tmp/upgrade.sql")
    psql(host, f"SELECT pgops.reconcile_access('{OLD_ACCESS}'::jsonb)", db=DB)
    psql(host, OLD_PAYMENT, db=DB)
    assert psql(host, "SELECT pg_has_role('admin', 'payments_owner', 'MEMBER')") == "t"
    yield
    # The real database's settings back (pg_partman's worker, the expiry job,
    # the session guard's database).
    run_playbook("playbooks/schema.yml")
    run_playbook("playbooks/access.yml")
    psql(host, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def test_the_roles_upgrade_it_in_place(host, old_database):
    extra = {"schema_database": DB, "access_database": DB}
    for playbook in ("playbooks/schema.yml", "playbooks/access.yml"):
        run = run_playbook(playbook, extra)
        assert run.returncode == 0, run.stdout[-3000:]
    assert psql(host, "SELECT max(version) FROM pgops.schema_migration", db=DB) == str(
        max(int(p.name[1:5]) for p in MIGRATIONS.glob("V*.sql"))
    )
    # The new grants: admin is no owner, writers write no transaction.
    assert psql(host, "SELECT pg_has_role('admin', 'payments_owner', 'MEMBER')") == "f"
    assert psql(host, "SELECT has_table_privilege('payments_app', 'payments.transaction', 'INSERT')", db=DB) == "f"
    # The data is there, and the old key replays its first answer.
    assert psql(host, "SELECT count(*) || ' ' || max(status) FROM payments.transaction", db=DB) == "1 succeeded"
    replay = psql(
        host,
        "SET ROLE payments_app; SELECT status || ' ' || replayed FROM payments.authorize(1, 'old-key', 1, 1, "
        "4200::bigint, 'EUR', NULL, 'desktop', 0.1::numeric, 'model-1')",
        db=DB,
    )
    assert replay == "authorized true"
    again = [run_playbook(p, extra) for p in ("playbooks/schema.yml", "playbooks/access.yml")]
    assert all(r.returncode == 0 for r in again)
    assert [max(recap_changed(r.stdout).values()) for r in again] == [0, 0], again[-1].stdout[-3000:]

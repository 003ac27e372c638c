"""Audit logging (role `audit`) and what must never reach a log or a dump:
sessions and DDL are logged with user and client, writes to sensitive tables
are audited, and after creating customers and running the payment workload
no full name, password or key is found in any server log file nor in a
fresh pg_dump."""

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgops.testing import LoginRole, connect, fetch_ca, host_address, psql

LOG_DIR = "/var/log/postgresql/audit"
ADMIN = LoginRole("m_admin", "molecule-admin-password")
APP = LoginRole("m_app", "molecule-app-password-01")
INVENTORY_PASSWORDS = [
    "molecule-admin-password",
    "molecule-developer-password",
    "molecule-reader-password",
    "molecule-app-password-01",
    "molecule-batch-password",
]


@pytest.fixture(scope="module")
def ca(host, tmp_path_factory):
    return fetch_ca(host, tmp_path_factory.mktemp("ca"))


def session_lines(host, pid, until, timeout=15):
    """The log lines of one backend, once `until` appears among them (the
    logging collector writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        out = host.run(f"grep -h -F '[{pid}]' {LOG_DIR}/*.log").stdout.splitlines()
        if any(until in line for line in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_logging_settings_are_live(host):
    got = psql(
        host,
        "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN "
        "('logging_collector', 'log_connections', 'log_disconnections', 'log_statement', "
        "'log_parameter_max_length', 'log_parameter_max_length_on_error', 'pgaudit.log', 'pgaudit.log_parameter', "
        "'pgaudit.role')",
    )
    assert got == (
        "log_connections=on log_disconnections=on log_parameter_max_length=0 log_parameter_max_length_on_error=0 "
        "log_statement=all logging_collector=on pgaudit.log=ddl,role pgaudit.log_parameter=off "
        "pgaudit.role=pgaudit_auditor"
    )
    assert "pgaudit" in psql(host, "SHOW shared_preload_libraries")
    assert psql(host, "SELECT extversion IS NOT NULL FROM pg_extension WHERE extname = 'pgaudit'", db="payments") == "t"
    directory = host.file(LOG_DIR)
    assert directory.user == "postgres" and directory.mode == 0o700
    files = host.run(f"stat -c '%a %U' {LOG_DIR}/*.log").stdout.split("\n")
    assert files and all(f == "600 postgres" for f in filter(None, files))


def test_sessions_and_ddl_are_logged_with_user_and_client(host, ca):
    app_name = f"audit-probe-{secrets.token_hex(3)}"
    # admin changes no payments table (migrations do), and creates no schema
    # (none may): the superuser gives it one for the probe.
    schema = f"audit_probe_{secrets.token_hex(3)}"
    table = f"{schema}.t"
    psql(host, f"CREATE SCHEMA {schema} AUTHORIZATION admin", db="payments")
    with connect(host_address(host), ADMIN, ca, dbname="payments", application_name=app_name, autocommit=True) as c:
        pid, client = c.execute("SELECT pg_backend_pid(), host(inet_client_addr())").fetchone()
        c.execute(f"CREATE TABLE {table} (id int)")
        c.execute(f"DROP TABLE {table}")
    psql(host, f"DROP SCHEMA {schema}", db="payments")
    lines = session_lines(host, pid, "disconnection:")
    text = "\n".join(lines)
    assert "connection authorized: user=m_admin database=payments" in text
    assert re.search(rf"AUDIT: SESSION,\d+,1,DDL,CREATE TABLE,TABLE,{table},CREATE TABLE {table} \(id int\)", text)
    assert re.search(rf"AUDIT: SESSION,\d+,1,DDL,DROP TABLE,TABLE,{table},", text)
    assert "disconnection: session time:" in text
    # Every line of the session names time, process, client (first: the
    # application's name, last, cannot push a forged one ahead of it), user,
    # database and application.
    after_auth = [line for line in lines if "connection received" not in line]
    assert after_auth and all(f"[{pid}] client={client} user=m_admin,db=payments," in line for line in after_auth)
    assert any(f",app={app_name} " in line for line in after_auth)


def test_writes_to_sensitive_tables_are_audited(host, ca):
    name = f"Audited shop {secrets.token_hex(3)}"
    with connect(host_address(host), APP, ca, dbname="payments", autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute(
            "INSERT INTO payments.merchant (name, country_code, default_currency) VALUES (%s, 'FR', 'EUR')", (name,)
        )
        c.execute("SELECT count(*) FROM payments.merchant").fetchone()  # reads are not audited
    text = "\n".join(session_lines(host, pid, "disconnection:"))
    audited = r'AUDIT: OBJECT,\d+,1,WRITE,INSERT,TABLE,payments\.merchant,"?INSERT INTO payments\.merchant'
    assert re.search(audited, text)
    assert ",READ,SELECT,TABLE,payments.merchant," not in text


def test_no_plaintext_name_password_or_key_in_logs_or_dump(host, ca, tmp_path):
    tag = secrets.token_hex(4)
    customers = [(f"leak_{tag}_{i}", f"Plain-Password-{tag}-{i}", f"Zoé Secretname {tag} {i}") for i in range(3)]
    with connect(host_address(host), APP, ca, dbname="payments", autocommit=True) as c:
        for username, password, full_name in customers:
            c.execute(
                "SELECT payments.create_customer(%s, %s, %s, %s)",
                (username, password, f"{username}@example.test", full_name),
            )
        # A failing call: the statement is logged with the error, its parameters are not.
        with pytest.raises(psycopg.errors.CheckViolation, match="password too short"):
            c.execute(
                "SELECT payments.create_customer(%s, %s, %s, %s)",
                (f"leak_{tag}_short", "Short1", "x@example.test", f"Error Secretname {tag}"),
            )
    project = Path(os.environ.get("PROJECT_DIR", Path(__file__).resolve().parents[3]))
    workload = subprocess.run(
        ["bash", "bench/payment_workload.sh", host.backend.host],
        cwd=project,
        env=dict(
            os.environ,
            DURATION="5",
            CLIENTS="4",
            OUT=str(tmp_path),
            LABEL="leak-check",
            BENCH_USER=APP.name,
            BENCH_PASSWORD=APP.password,
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert workload.returncode == 0, workload.stdout[-2000:] + workload.stderr[-2000:]

    # Every full name the database holds (decrypted), every password we used, every key file.
    names = psql(
        host,
        "SELECT DISTINCT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer",
        db="payments",
    ).splitlines()
    keys = host.run("cat /etc/postgresql/pgops-pii/pii-key-*").stdout.split()
    secrets_ = set(names) | {p for _, p, _ in customers} | {f"Error Secretname {tag}"}
    secrets_ |= set(INVENTORY_PASSWORDS) | set(keys)
    assert {n for _, _, n in customers} <= set(names) and keys
    host.run("install -m 600 /dev/null /var/tmp/leak-patterns")
    subprocess.run(
        ["docker", "exec", "-i", host.backend.host, "sh", "-c", "cat > /var/tmp/leak-patterns"],
        input="\n".join(sorted(secrets_)) + "\n",
        text=True,
        check=True,
    )
    try:
        # The search itself finds what it looks for (decrypted on purpose here).
        positive = host.run(
            "runuser -u postgres -- psql -XAt -d payments -c "
            '"SELECT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer" '
            "| grep -c -F -f /var/tmp/leak-patterns"
        )
        assert int(positive.stdout.strip() or 0) >= len(customers)

        logs = host.run("grep -r -l -F -f /var/tmp/leak-patterns /var/log/postgresql")
        assert logs.rc == 1, f"plaintext secrets in {logs.stdout}"
        for dump in ("pg_dump -d payments", "pg_dumpall --globals-only"):
            made = host.run(f"runuser -u postgres -- {dump} -f /var/tmp/leak-dump.sql")
            assert made.rc == 0, made.stderr
            assert host.file("/var/tmp/leak-dump.sql").size > 1000
            found = host.run("grep -c -F -f /var/tmp/leak-patterns /var/tmp/leak-dump.sql")
            assert found.rc == 1, f"{found.stdout} plaintext secrets in {dump}"
    finally:
        host.run("rm -f /var/tmp/leak-patterns /var/tmp/leak-dump.sql")


def test_logs_are_kept_for_the_retention_period(host):
    assert host.file("/etc/tmpfiles.d/pgops-audit-log.conf").contains(f"^d {LOG_DIR} 0700 postgres postgres m:90d$")
    assert host.service("systemd-tmpfiles-clean.timer").is_running
    host.run(f"runuser -u postgres -- touch -d '100 days ago' {LOG_DIR}/postgresql-expired.log")
    host.run(f"runuser -u postgres -- touch -d '80 days ago' {LOG_DIR}/postgresql-kept.log")
    try:
        assert host.run("systemd-tmpfiles --clean /etc/tmpfiles.d/pgops-audit-log.conf").rc == 0
        assert not host.file(f"{LOG_DIR}/postgresql-expired.log").exists
        assert host.file(f"{LOG_DIR}/postgresql-kept.log").exists
        current = psql(host, "SELECT pg_current_logfile()")
        assert host.file(current).exists
    finally:
        host.run(f"rm -f {LOG_DIR}/postgresql-kept.log {LOG_DIR}/postgresql-expired.log")


def test_role_network_restriction(host, ca):
    """m_batch may connect only from the server itself (postgresql_hba_role_networks)."""
    batch = LoginRole("m_batch", "molecule-batch-password")
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
        connect(host_address(host), batch, ca, dbname="payments")
    local = host.run(
        "PGPASSWORD=molecule-batch-password psql -XAt "
        "'host=127.0.0.1 user=m_batch dbname=payments sslmode=require' -c 'SELECT current_user'"
    )
    assert local.rc == 0 and local.stdout.strip() == "m_batch", local.stderr
    # Other users are not affected.
    with connect(host_address(host), APP, ca, dbname="payments") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "m_app"


def test_no_password_is_refused_and_no_rule_trusts(host, ca):
    with pytest.raises(psycopg.OperationalError, match="no password supplied|password authentication failed"):
        connect(host_address(host), LoginRole("m_reader", ""), ca, dbname="payments")
    methods = psql(host, "SELECT string_agg(DISTINCT auth_method, ',' ORDER BY auth_method) FROM pg_hba_file_rules")
    assert methods == "cert,peer,reject,scram-sha-256"
    # The certificate is for the pooler's lookup user only, from loopback only.
    cert = psql(
        host,
        "SELECT string_agg(DISTINCT user_name::text || ' ' || address, ',' ORDER BY user_name::text || ' ' || address) "
        "FROM pg_hba_file_rules "
        "WHERE auth_method = 'cert'",
    )
    assert cert == "{pgbouncer_auth} 127.0.0.1,{pgbouncer_auth} ::1"

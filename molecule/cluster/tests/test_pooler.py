"""Client access through PgBouncer and HAProxy, with real clients over TLS
from the controller: the read-write port reaches the primary and the
read-only port a replica, from any member's HAProxy; the pooler refuses a
wrong password and a client without TLS; only the monitoring group reads the
console; 1000 clients share a server whose max_connections is 100; a user
removed from access_users can no longer log in. (The failover through the
read-write port is in test_ha.py, with the other fault trials.)"""

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import NODES, USERS, member

from pgops.faults import docker, wait_until
from pgops.testing import LoginRole, connect, psql, run_playbook

RW_PORT, RO_PORT, POOLER_PORT = 5000, 5001, 6432  # haproxy and pgbouncer defaults
MONITOR = LoginRole("m_monitor", "molecule-monitor-password")
APP = USERS["payments_app"]
MAX_CONNECTIONS = 100  # molecule.yml


def pooled(address, role, ca, port, dbname="payments", **kwargs):
    return connect(address, role, ca, dbname=dbname, port=port, **kwargs)


def in_recovery(conn):
    return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]


@pytest.mark.parametrize("via", list(NODES))
def test_read_write_port_reaches_the_primary_and_read_only_a_replica(via, leader_name, cluster_ca, db, payer):
    """From every member's HAProxy: the read-write port lands on the primary
    (a payment is authorized through it, in transaction pooling), the
    read-only port on a streaming replica."""
    address = NODES[via]
    with pooled(address, APP, cluster_ca, RW_PORT) as conn:
        assert in_recovery(conn) is False
        row = conn.execute(
            "SELECT status FROM payments.authorize(%s::bigint, %s, %s::bigint, %s::bigint, 1500::bigint, "
            "'EUR'::char(3), '198.51.100.7'::inet, 'mobile', 0.1::numeric, 'model-1')",
            (payer["merchant"], f"pooled-{secrets.token_hex(6)}", payer["customer"], payer["method"]),
        ).fetchone()
        conn.commit()
        assert row[0] == "authorized"
        # The pooler's TLS certificate names every member: verify-full passed
        # through another member's HAProxy.
        assert conn.info.pgconn.ssl_in_use
    with pooled(address, USERS["readonlyuser"], cluster_ca, RO_PORT) as conn:
        assert in_recovery(conn) is True
        assert conn.execute("SELECT count(*) >= 0 FROM payments.merchant").fetchone()[0]


def test_read_only_port_falls_back_to_the_primary_without_a_healthy_replica(leader_name, cluster_ca):
    """Both replicas' Patroni frozen (SIGSTOP to its main process only: its
    REST API stops answering, PostgreSQL streams on): within two checks the
    read-only port leads to the primary; once they answer again, back to a
    replica."""
    replicas = [n for n in NODES if n != leader_name]
    address = NODES[leader_name]
    reader = USERS["readonlyuser"]

    def lands_on_a_replica():
        with pooled(address, reader, cluster_ca, RO_PORT) as conn:
            return in_recovery(conn)

    try:
        for name in replicas:
            docker("exec", name, "systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "patroni")
        # Two failed checks, each up to its 2 s timeout (measured: about 4 s).
        wait_until(lambda: not lands_on_a_replica(), 15, "the read-only port on the primary")
    finally:
        for name in replicas:
            docker("exec", name, "systemctl", "kill", "--kill-whom=main", "--signal=SIGCONT", "patroni")
    wait_until(lands_on_a_replica, 15, "the read-only port back on a replica")


def test_pooler_refuses_a_wrong_password_and_a_client_without_tls(leader_name, cluster_ca):
    address = NODES[leader_name]
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        pooled(address, LoginRole(APP.name, "not-the-password-at-all"), cluster_ca, POOLER_PORT)
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        pooled(address, APP, None, POOLER_PORT, sslmode="disable")
    # The superuser and the lookup user never log in through the pooler.
    for name in ("postgres", "pgbouncer_auth"):
        with pytest.raises(psycopg.OperationalError):
            pooled(address, LoginRole(name, "whatever-password-1"), cluster_ca, POOLER_PORT)


def test_only_the_monitoring_group_reads_the_console(leader_name, cluster_ca):
    address = NODES[leader_name]
    with pooled(address, MONITOR, cluster_ca, POOLER_PORT, dbname="pgbouncer", autocommit=True) as conn:
        pools = conn.execute("SHOW POOLS").fetchall()
        assert any(p[0] == "payments" for p in pools)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        pooled(address, APP, cluster_ca, POOLER_PORT, dbname="pgbouncer", autocommit=True)
    assert time.monotonic() - started < 5  # refused at once, not left waiting


def test_thousand_clients_share_a_hundred_connection_server(leader_name, cluster_ca):
    """1000 clients connected at once to one pooler, each running a
    transaction, against a server that accepts max_connections=100: every
    one succeeds, and the server never holds more than the pooler's share."""
    address = NODES[leader_name]
    leader = member(leader_name)
    assert psql(leader, "SHOW max_connections") == str(MAX_CONNECTIONS)
    clients = 1000

    def open_one(_):
        return pooled(address, APP, cluster_ca, POOLER_PORT, connect_timeout=60)

    with ThreadPoolExecutor(max_workers=64) as pool:
        conns = list(pool.map(open_one, range(clients)))
    try:
        with pooled(address, MONITOR, cluster_ca, POOLER_PORT, dbname="pgbouncer", autocommit=True) as console:
            columns = None
            cur = console.execute("SHOW POOLS")
            columns = [c.name for c in cur.description]
            app_pool = next(dict(zip(columns, p, strict=True)) for p in cur if p[0] == "payments" and p[1] == APP.name)
        assert app_pool["cl_active"] + app_pool["cl_waiting"] >= clients

        def use(conn):
            value = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (APP.name,)).fetchone()
            conn.commit()
            return value[0]

        with ThreadPoolExecutor(max_workers=200) as pool:
            seen = list(pool.map(use, conns))
        assert len(seen) == clients
        assert max(seen) <= MAX_CONNECTIONS * 0.75  # pgbouncer_server_share
    finally:
        for conn in conns:
            conn.close()
    total = int(psql(leader, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
    assert total < MAX_CONNECTIONS
    # The pool keeps its server connections (server_idle_timeout): end them,
    # so that the next suites find the server's slots as they were.
    psql(leader, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP.name}'")


def test_a_user_removed_from_access_users_cannot_log_in_through_the_pooler(leader_name, cluster_ca):
    """The access role locks it (NOLOGIN): the pooler's lookup returns nothing
    for it, and it is refused directly too; listing it again re-opens it."""
    address = NODES[leader_name]
    removed = USERS["developer"]
    scenario = yaml.safe_load((Path(os.environ["PROJECT_DIR"]) / "molecule/cluster/molecule.yml").read_text())
    users = scenario["provisioner"]["inventory"]["group_vars"]["postgresql"]["access_users"]
    with pooled(address, removed, cluster_ca, RW_PORT) as conn:
        conn.execute("SELECT 1")
    try:
        result = run_playbook(
            "playbooks/access.yml", {"access_users": [u for u in users if u["name"] != removed.name]}, limit=leader_name
        )
        assert result.rc == 0, result.stdout[-3000:]
        for port in (RW_PORT, POOLER_PORT):
            with pytest.raises(psycopg.OperationalError):
                pooled(address, removed, cluster_ca, port)
        with pytest.raises(psycopg.OperationalError):
            connect(address, removed, cluster_ca, dbname="payments")
    finally:
        result = run_playbook("playbooks/access.yml", limit=leader_name)
        assert result.rc == 0, result.stdout[-3000:]
    with pooled(address, removed, cluster_ca, RW_PORT) as conn:
        conn.execute("SELECT 1")

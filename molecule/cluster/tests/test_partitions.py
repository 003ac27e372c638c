"""Rows land in the right partition, time-bounded queries are pruned, the
default partition is monitored, and every partition carries the rules."""

import time
from datetime import UTC, datetime, timedelta

import pytest


def month_start(months_back: int) -> datetime:
    now = datetime.now(UTC)
    year, month = now.year, now.month - months_back
    while month < 1:
        month += 12
        year -= 1
    return datetime(year, month, 1, tzinfo=UTC)


def insert_pending(conn, payer, created_at):
    return conn.execute(
        "INSERT INTO payments.transaction (created_at, merchant_id, customer_id, payment_method_id, amount, "
        "currency, status, device_type) VALUES (%s, %s, %s, %s, 100, 'EUR', 'pending', 'desktop') "
        "RETURNING id, tableoid::regclass::text",
        (created_at, payer["merchant"], payer["customer"], payer["method"]),
    ).fetchone()


def relation_names(node):
    """Every "Relation Name" in an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(node, dict):
        if "Relation Name" in node:
            yield node["Relation Name"]
        for value in node.values():
            yield from relation_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from relation_names(value)


@pytest.mark.parametrize("months_back", [0, 3, 11])
def test_rows_land_in_their_month(db, payer, months_back):
    when = month_start(months_back) + timedelta(days=4, hours=5)
    _, partition = insert_pending(db(), payer, when)
    assert partition == f"payments.transaction_p{when:%Y_%m}"


def test_time_bounded_query_is_pruned_to_its_month(db, payer):
    start = month_start(2)
    end = month_start(1)
    plan = (
        db()
        .execute(
            "EXPLAIN (FORMAT JSON) SELECT * FROM payments.transaction "
            "WHERE merchant_id = %s AND created_at >= %s AND created_at < %s",
            (payer["merchant"], start, end),
        )
        .fetchone()[0]
    )
    scanned = {name for name in relation_names(plan) if name.startswith("transaction_p")}
    assert scanned == {f"transaction_p{start:%Y_%m}"}


def test_future_partitions_are_premade(db):
    conn = db()
    ahead = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'payments.transaction'::regclass "
        "AND c.relname > 'transaction_p' || to_char(now(), 'YYYY_MM') AND c.relname <> 'transaction_default'"
    ).fetchone()[0]
    premake = conn.execute(
        "SELECT premake FROM partman.part_config WHERE parent_table = 'payments.transaction'"
    ).fetchone()[0]
    assert ahead >= premake >= 4


def test_default_partition_is_empty_and_monitored(db, payer):
    conn = db(autocommit=False)
    assert all(
        n == 0 for _, n in conn.execute("SELECT parent_table, row_count FROM pgops.default_partition_rows").fetchall()
    )
    _, partition = insert_pending(conn, payer, datetime.now(UTC) + timedelta(days=3650))
    assert partition == "payments.transaction_default"
    rows = dict(conn.execute("SELECT parent_table, row_count FROM pgops.default_partition_rows").fetchall())
    assert rows["payments.transaction"] == 1
    conn.rollback()


def test_every_partition_carries_the_append_only_triggers(db):
    missing = (
        db()
        .execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'payments.transaction_state_change'::regclass AND NOT EXISTS "
            "(SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'transaction_state_change_append_only')"
        )
        .fetchall()
    )
    assert missing == []


def test_partman_background_worker_is_running(host):
    for _ in range(30):
        if "pg_partman master background worker" in host.check_output("ps -eo cmd"):
            return
        time.sleep(1)
    raise AssertionError("pg_partman master background worker is not running")

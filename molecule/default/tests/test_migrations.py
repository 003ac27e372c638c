"""The migration ledger, driven through the real playbook: check mode lists
pending migrations, edited files and broken migrations fail loudly and leave
nothing half-applied, the advisory lock keeps runs apart, a migration waiting
for a lock gives up before it stalls writers, and a non-transactional one
builds indexes concurrently."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from pgops.testing import psql, recap_changed, run_playbook

MIGRATIONS = Path(__file__).resolve().parents[3] / "sql/migrations"
LOCK_KEY = 0x7067_6F70_735F_6D67
PLAYBOOK = "playbooks/schema.yml"


@pytest.fixture(scope="module", autouse=True)
def forget_test_migrations(host):
    """Leave the ledger as the real files describe it, for the tests after these."""
    yield
    psql(
        host,
        "DELETE FROM pgops.schema_migration WHERE version >= 9000;"
        "DROP TABLE IF EXISTS pgops.marker_9001, pgops.marker_9002, pgops.half_done, pgops.lock_probe, "
        "pgops.cic_probe",
        db="payments",
    )


@pytest.fixture
def migrations(tmp_path):
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target)
    return target


def ledger(host):
    return psql(host, "SELECT string_agg(name, ',' ORDER BY version) FROM pgops.schema_migration", db="payments")


def table_exists(host, name):
    return psql(host, f"SELECT to_regclass('{name}') IS NOT NULL", db="payments") == "t"


def test_ledger_matches_the_files(host):
    assert ledger(host).split(",") == sorted(p.name for p in MIGRATIONS.glob("*.sql"))


def test_check_mode_lists_pending_migrations_without_applying_them(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    before = ledger(host)
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)}, check=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "V9001__marker.sql" in run.stdout
    assert ledger(host) == before
    assert not table_exists(host, "pgops.marker_9001")


def test_a_new_migration_is_applied_once(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert table_exists(host, "pgops.marker_9001")
    assert ledger(host).endswith("V9001__marker.sql")
    again = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert again.returncode == 0
    assert max(recap_changed(again.stdout).values()) == 0


def test_an_edited_applied_migration_fails_loudly_before_anything_is_applied(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    edited = migrations / "V0004__reference_data.sql"
    edited.write_text(edited.read_text() + "\n-- a quiet edit\n")
    (migrations / "V9002__after.sql").write_text("CREATE TABLE pgops.marker_9002 (id int);\n")
    before = ledger(host)
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode != 0
    assert "V0004__reference_data.sql was edited after it was applied" in run.stdout
    assert ledger(host) == before
    assert not table_exists(host, "pgops.marker_9002")


def test_a_broken_migration_is_rolled_back_whole(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    (migrations / "V9002__broken.sql").write_text(
        "CREATE TABLE pgops.half_done (id int);\nALTER TABLE pgops.no_such_table ADD COLUMN x int;\n"
    )
    before = ledger(host)
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode != 0
    assert "migration V9002__broken.sql failed and was rolled back" in run.stdout
    assert "no_such_table" in run.stdout
    assert ledger(host) == before
    assert not table_exists(host, "pgops.half_done")


def test_a_second_run_waits_for_the_lock_and_gives_up_clearly(host, migrations, db, tester):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    (migrations / "V9002__locked.sql").write_text("CREATE TABLE pgops.marker_9002 (id int);\n")
    # No login may take advisory locks in the database (the access role
    # revokes them): the harness stands in for another run, by a grant of
    # its own.
    functions = "FUNCTION pg_advisory_lock(bigint), pg_advisory_unlock(bigint)"
    psql(host, f"GRANT EXECUTE ON {functions} TO {tester.name}", db="payments")
    holder = db()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations), "schema_migration_lock_timeout": 2})
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        psql(host, f"REVOKE EXECUTE ON {functions} FROM {tester.name}", db="payments")
    assert run.returncode != 0
    assert "another migration run holds the lock" in run.stdout
    assert not table_exists(host, "pgops.marker_9002")


def test_a_migration_behind_a_long_reader_gives_up_without_stalling_writers(host, migrations, db):
    """A long transaction reads a table; the migration that alters it waits
    lock_timeout, retries, then fails clearly, and writes to the table keep
    going meanwhile (an ALTER waiting for its lock queues every later writer
    behind it: that is the outage the timeout bounds)."""
    psql(host, "CREATE TABLE pgops.lock_probe (id int); GRANT ALL ON pgops.lock_probe TO PUBLIC", db="payments")
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    (migrations / "V9003__alter_busy_table.sql").write_text("ALTER TABLE pgops.lock_probe ADD COLUMN extra int;\n")
    reader = db(autocommit=False)
    reader.execute("SELECT count(*) FROM pgops.lock_probe")  # holds ACCESS SHARE until rollback
    writes, stop = [], threading.Event()

    def writer():
        conn = db()
        while not stop.is_set():
            started = time.monotonic()
            conn.execute("INSERT INTO pgops.lock_probe VALUES (1)")
            writes.append(time.monotonic() - started)
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run = run_playbook(
            PLAYBOOK,
            {
                "schema_migrations_dir": str(migrations),
                "schema_migration_ddl_lock_timeout": "1s",
                "schema_migration_lock_retries": 2,
            },  # fmt: skip
        )
    finally:
        stop.set()
        thread.join(30)
        reader.rollback()
    assert run.returncode != 0
    assert "V9003__alter_busy_table.sql failed and was rolled back" in run.stdout
    assert "lock timeout" in run.stdout and "2 retries" in run.stdout, run.stdout[-2000:]
    assert writes and max(writes) < 3, max(writes)
    assert "V9003" not in ledger(host)
    # Once the reader is gone, the same migration applies.
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert psql(host, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgops.lock_probe'::regclass "
                "AND attname = 'extra'", db="payments") == "1"  # fmt: skip


def test_a_non_transactional_migration_indexes_each_partition_concurrently(host, migrations):
    """The pattern for a populated partitioned table: an index on the parent
    only (invalid), CREATE INDEX CONCURRENTLY on each partition, then ATTACH;
    the parent's index becomes valid once every partition has its own. A
    failure part-way leaves no ledger row, and the next run finishes it."""
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    (migrations / "V9003__alter_busy_table.sql").write_text("ALTER TABLE pgops.lock_probe ADD COLUMN extra int;\n")
    (migrations / "V9004__partitioned_probe.sql").write_text(
        "CREATE TABLE pgops.cic_probe (at date NOT NULL, x int) PARTITION BY RANGE (at);\n"
        "CREATE TABLE pgops.cic_probe_a PARTITION OF pgops.cic_probe\n"
        "  FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');\n"
        "CREATE TABLE pgops.cic_probe_b PARTITION OF pgops.cic_probe\n"
        "  FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');\n"
        "INSERT INTO pgops.cic_probe SELECT '2026-01-01'::date + (n % 50), n FROM generate_series(1, 1000) n;\n"
    )
    body = (
        "-- pgops: no-transaction\n"
        "CREATE INDEX IF NOT EXISTS cic_probe_x ON ONLY pgops.cic_probe (x);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS cic_probe_a_x ON pgops.cic_probe_a (x);\n"
        "ALTER INDEX pgops.cic_probe_x ATTACH PARTITION pgops.cic_probe_a_x;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS cic_probe_b_x ON pgops.cic_probe_b (x);\n"
    )
    # First with a typo in the last statement: the run fails part-way, no ledger row.
    (migrations / "V9005__index_partitions.sql").write_text(
        body + "ALTER INDEX pgops.cic_probe_x ATTACH PARTITION pgops.no_such_index;\n"
    )
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode != 0
    assert "V9005__index_partitions.sql failed part-way (non-transactional" in run.stdout, run.stdout[-2000:]
    assert ledger(host).endswith("V9004__partitioned_probe.sql")
    # Fixed (a file never applied may change): the whole file runs again and completes.
    (migrations / "V9005__index_partitions.sql").write_text(
        body + "ALTER INDEX pgops.cic_probe_x ATTACH PARTITION pgops.cic_probe_b_x;\n"
    )
    run = run_playbook(PLAYBOOK, {"schema_migrations_dir": str(migrations)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert ledger(host).endswith("V9005__index_partitions.sql")
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'pgops.cic_probe_x'::regclass"
    assert psql(host, valid, db="payments") == "t"

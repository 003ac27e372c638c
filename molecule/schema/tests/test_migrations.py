"""The migration ledger, driven through the real playbook: check mode lists
pending migrations, edited files and broken migrations fail loudly and leave
nothing half-applied, and the advisory lock keeps runs apart."""

import shutil
from pathlib import Path

import pytest

from pgops.testing import psql, recap_changed, run_playbook

testinfra_hosts = ["ansible://molecule-schema1"]

HOST = "molecule-schema1"
MIGRATIONS = Path(__file__).resolve().parents[3] / "sql/migrations"
LOCK_KEY = 0x7067_6F70_735F_6D67


@pytest.fixture(scope="module", autouse=True)
def forget_test_migrations(host):
    """Leave the ledger as the real files describe it, for the tests after these."""
    yield
    psql(
        host,
        "DELETE FROM pgops.schema_migration WHERE version >= 9000;"
        "DROP TABLE IF EXISTS pgops.marker_9001, pgops.marker_9002, pgops.half_done",
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
    run = run_playbook("site.yml", {"schema_migrations_dir": str(migrations)}, check=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "V9001__marker.sql" in run.stdout
    assert ledger(host) == before
    assert not table_exists(host, "pgops.marker_9001")


def test_a_new_migration_is_applied_once(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    run = run_playbook("site.yml", {"schema_migrations_dir": str(migrations)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert table_exists(host, "pgops.marker_9001")
    assert ledger(host).endswith("V9001__marker.sql")
    again = run_playbook("site.yml", {"schema_migrations_dir": str(migrations)})
    assert again.returncode == 0
    assert recap_changed(again.stdout)[HOST] == 0


def test_an_edited_applied_migration_fails_loudly_before_anything_is_applied(host, migrations):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    edited = migrations / "V0004__reference_data.sql"
    edited.write_text(edited.read_text() + "\n-- a quiet edit\n")
    (migrations / "V9002__after.sql").write_text("CREATE TABLE pgops.marker_9002 (id int);\n")
    before = ledger(host)
    run = run_playbook("site.yml", {"schema_migrations_dir": str(migrations)})
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
    run = run_playbook("site.yml", {"schema_migrations_dir": str(migrations)})
    assert run.returncode != 0
    assert "migration V9002__broken.sql failed and was rolled back" in run.stdout
    assert "no_such_table" in run.stdout
    assert ledger(host) == before
    assert not table_exists(host, "pgops.half_done")


def test_a_second_run_waits_for_the_lock_and_gives_up_clearly(host, migrations, db):
    (migrations / "V9001__marker.sql").write_text("CREATE TABLE pgops.marker_9001 (id int);\n")
    (migrations / "V9002__locked.sql").write_text("CREATE TABLE pgops.marker_9002 (id int);\n")
    holder = db()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        run = run_playbook("site.yml", {"schema_migrations_dir": str(migrations), "schema_migration_lock_timeout": 2})
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    assert run.returncode != 0
    assert "another migration run holds the lock" in run.stdout
    assert not table_exists(host, "pgops.marker_9002")

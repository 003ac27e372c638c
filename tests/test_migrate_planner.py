"""The migration runner's planning rules (the database side is exercised by
the Molecule `schema` scenario)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "pgops_migrate", Path(__file__).resolve().parent.parent / "roles/schema/library/pgops_migrate.py"
)
migrate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(migrate)


def files(*names):
    return migrate.parse([{"name": n, "sql": f"-- {n}\n"} for n in names])


def ledger_of(parsed):
    return [{"version": m["version"], "name": m["name"], "checksum": m["checksum"]} for m in parsed]


def test_parse_sorts_by_version_and_checksums_content():
    parsed = files("V0010__b.sql", "V0002__a.sql")
    assert [m["version"] for m in parsed] == [2, 10]
    assert all(len(m["checksum"]) == 64 for m in parsed)


@pytest.mark.parametrize("name", ["0001__a.sql", "V1__a.sql", "V0001_a.sql", "V0001__A.sql", "V0001__a.txt"])
def test_parse_rejects_badly_named_files(name):
    with pytest.raises(migrate.MigrationError, match="named V<version>__<name>.sql"):
        files(name)


def test_parse_rejects_duplicate_versions():
    with pytest.raises(migrate.MigrationError, match="used by both"):
        files("V0001__a.sql", "V0001__b.sql")


def test_plan_on_an_empty_ledger_is_everything_in_order():
    parsed = files("V0002__b.sql", "V0001__a.sql")
    assert [m["name"] for m in migrate.plan(parsed, [])] == ["V0001__a.sql", "V0002__b.sql"]


def test_plan_is_empty_when_everything_is_applied():
    parsed = files("V0001__a.sql", "V0002__b.sql")
    assert migrate.plan(parsed, ledger_of(parsed)) == []


def test_plan_lists_only_new_migrations():
    applied = files("V0001__a.sql")
    parsed = files("V0001__a.sql", "V0002__b.sql")
    assert [m["name"] for m in migrate.plan(parsed, ledger_of(applied))] == ["V0002__b.sql"]


def test_an_edited_applied_file_is_refused():
    applied = files("V0001__a.sql")
    edited = migrate.parse([{"name": "V0001__a.sql", "sql": "-- changed\n"}])
    with pytest.raises(migrate.MigrationError, match="V0001__a.sql was edited after it was applied"):
        migrate.plan(edited, ledger_of(applied))


def test_a_removed_or_renamed_applied_file_is_refused():
    applied = files("V0001__a.sql", "V0002__b.sql")
    with pytest.raises(migrate.MigrationError, match="its file is gone"):
        migrate.plan(files("V0001__a.sql"), ledger_of(applied))
    renamed = migrate.parse([{"name": "V0002__c.sql", "sql": "-- V0002__b.sql\n"}])
    with pytest.raises(migrate.MigrationError, match="applied as V0002__b.sql"):
        migrate.plan(files("V0001__a.sql") + renamed, ledger_of(applied))


def test_a_file_older_than_the_newest_applied_one_is_refused():
    applied = files("V0001__a.sql", "V0003__c.sql")
    with pytest.raises(migrate.MigrationError, match="out of order"):
        migrate.plan(files("V0001__a.sql", "V0002__b.sql", "V0003__c.sql"), ledger_of(applied))


def test_statements_are_split_at_top_level_semicolons_only():
    sql = """-- pgops: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x); -- trailing; comment
/* a ; comment /* nested ; */ still */ SELECT 'it''s; quoted', "odd;name", E'esc\\'; aped';
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$;
DO $$ BEGIN PERFORM 1; END $$;
SELECT $1, x$y FROM t;
-- only a comment at the end;
"""
    statements = migrate.split_statements(sql)
    assert len(statements) == 5, statements
    assert statements[0].endswith("ON t (x);")
    assert "'it''s; quoted'" in statements[1] and "E'esc\\'; aped'" in statements[1]
    assert statements[2].endswith("$fn$ SELECT 1; $fn$;")
    assert statements[3] == "DO $$ BEGIN PERFORM 1; END $$;"
    assert statements[4].startswith("SELECT $1, x$y")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("-- pgops: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\n", True),
        ("-- Adds an index.\n--   pgops:  no-transaction  \n\nCREATE INDEX CONCURRENTLY i ON t (x);\n", True),
        ("CREATE TABLE t (x int);\n-- pgops: no-transaction\n", False),
        ("-- pgops: no-transactions\nCREATE TABLE t (x int);\n", False),
        ("CREATE TABLE t (x int);\n", False),
    ],
)
def test_only_a_leading_marker_makes_a_migration_non_transactional(sql, expected):
    assert migrate.is_non_transactional(sql) is expected
    assert migrate.parse([{"name": "V0001__a.sql", "sql": sql}])[0]["transactional"] is not expected

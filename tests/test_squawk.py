"""make lint runs squawk on sql/migrations with the project's .squawk.toml: a
new migration that would lock or rewrite a hot payments table fails, a safe
one passes, and only migrations applied before squawk are exempt."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SQUAWK = Path(sys.executable).parent / "squawk"


def squawk(tmp_path, sql):
    (tmp_path / "sql/migrations").mkdir(parents=True)
    shutil.copy(ROOT / ".squawk.toml", tmp_path)
    (tmp_path / "sql/migrations/V9999__new.sql").write_text(sql)
    return subprocess.run([str(SQUAWK), "sql/migrations/V9999__new.sql"], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE INDEX transaction_status_idx ON payments.transaction (status);", "require-concurrent-index-creation"),
        ("ALTER TABLE payments.merchant ADD COLUMN tier int NOT NULL;", "adding-required-field"),
        ("ALTER TABLE payments.merchant ALTER COLUMN name TYPE varchar(300);", "changing-column-type"),
        (
            "ALTER TABLE payments.transaction ADD CONSTRAINT positive CHECK (amount > 0);",
            "constraint-missing-not-valid",
        ),
    ],
    ids=["blocking-index", "not-null-without-default", "rewrite", "validating-constraint"],
)
def test_a_locking_migration_fails(tmp_path, sql, rule):
    run = squawk(tmp_path, sql)
    assert run.returncode != 0
    assert rule in run.stdout


def test_a_safe_migration_passes(tmp_path):
    run = squawk(tmp_path, "CREATE INDEX CONCURRENTLY transaction_status_idx ON payments.transaction (status);\n")
    assert run.returncode == 0, run.stdout


def test_only_migrations_older_than_squawk_are_exempt():
    config = (ROOT / ".squawk.toml").read_text()
    exempt = re.findall(r'"sql/migrations/(V(\d+)__[^"]+)"', config)
    assert exempt and all(int(version) <= 17 for _, version in exempt)
    assert all((ROOT / "sql/migrations" / name).is_file() for name, _ in exempt)

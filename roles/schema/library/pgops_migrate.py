#!/usr/bin/python
"""Apply versioned SQL migrations with a checksum ledger (pgops)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pgops_migrate
short_description: Apply ordered, versioned SQL migrations with a checksum ledger
description:
  - Each migration and its ledger row are applied in one transaction.
  - The ledger records a SHA-256 of every applied file; an applied file that was
    edited, removed or renamed fails the run before anything is applied.
  - A session advisory lock keeps two runs from interleaving.
  - In check mode it only lists the pending migrations.
  - Refuses to run on a server in recovery (a standby).
options:
  database: {type: str, required: true, description: Database to migrate.}
  migrations:
    type: list
    elements: dict
    required: true
    description: "[{name: V0001__name.sql, sql: ...}], in any order."
  settings:
    type: dict
    default: {}
    description: Session settings (custom GUCs) visible to the migrations, e.g. pgops.partition_interval.
  lock_timeout: {type: int, default: 60, description: Seconds to wait for another run's lock.}
  login_unix_socket: {type: str, default: /var/run/postgresql, description: Socket directory.}
  login_port: {type: int, default: 5432, description: Port.}
"""

RETURN = r"""
pending: {description: Migrations not yet applied (before this run), type: list, returned: always}
applied: {description: Migrations applied by this run, type: list, returned: always}
"""

import hashlib
import re
import time

from ansible.module_utils.basic import AnsibleModule

NAME_RE = re.compile(r"^V(\d{4,})__([a-z0-9_]+)\.sql$")
LOCK_KEY = 0x7067_6F70_735F_6D67  # "pgops_mg": one lock for all pgops migration runs
LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS pgops;
CREATE TABLE IF NOT EXISTS pgops.schema_migration (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_by  text        NOT NULL DEFAULT current_user,
    duration_ms integer     NOT NULL
);
"""


class MigrationError(Exception):
    pass


def parse(migrations: list[dict]) -> list[dict]:
    """Validate names, compute checksums, sort by version."""
    parsed, seen = [], {}
    for item in migrations:
        match = NAME_RE.match(item["name"])
        if not match:
            raise MigrationError(f"{item['name']}: migration files are named V<version>__<name>.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"version {version} is used by both {seen[version]} and {item['name']}")
        seen[version] = item["name"]
        checksum = hashlib.sha256(item["sql"].encode()).hexdigest()
        parsed.append({"version": version, "name": item["name"], "sql": item["sql"], "checksum": checksum})
    return sorted(parsed, key=lambda m: m["version"])


def plan(files: list[dict], ledger: list[dict]) -> list[dict]:
    """The migrations to apply, after checking the ledger against the files."""
    by_version = {m["version"]: m for m in files}
    problems = []
    for row in ledger:
        current = by_version.get(row["version"])
        if current is None:
            problems.append(f"{row['name']} was applied but its file is gone")
        elif current["name"] != row["name"]:
            problems.append(
                f"version {row['version']} was applied as {row['name']} but the file is now {current['name']}"
            )
        elif current["checksum"] != row["checksum"]:
            problems.append(
                f"{row['name']} was edited after it was applied "
                f"(ledger sha256 {row['checksum'][:12]}, file sha256 {current['checksum'][:12]}); "
                "add a new migration instead"
            )
    if problems:
        raise MigrationError("; ".join(problems))
    applied = {row["version"] for row in ledger}
    pending = [m for m in files if m["version"] not in applied]
    newest = max(applied, default=0)
    late = [m["name"] for m in pending if m["version"] < newest]
    if late:
        raise MigrationError(f"{', '.join(late)} would apply out of order (newest applied version is {newest})")
    return pending


def main():
    module = AnsibleModule(
        argument_spec={
            "database": {"type": "str", "required": True},
            "migrations": {"type": "list", "elements": "dict", "required": True},
            "settings": {"type": "dict", "default": {}},
            "lock_timeout": {"type": "int", "default": 60},
            "login_unix_socket": {"type": "str", "default": "/var/run/postgresql"},
            "login_port": {"type": "int", "default": 5432},
        },
        supports_check_mode=True,
    )
    try:
        import psycopg
    except ImportError:
        module.fail_json(msg="pgops_migrate needs psycopg 3 on the database host (Debian: python3-psycopg)")
    p = module.params
    try:
        files = parse(p["migrations"])
    except MigrationError as exc:
        module.fail_json(msg=str(exc))

    try:
        conn = psycopg.connect(host=p["login_unix_socket"], port=p["login_port"], dbname=p["database"], autocommit=True)
    except psycopg.Error as exc:
        module.fail_json(msg=f"cannot connect to database {p['database']}: {exc}")

    with conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            module.fail_json(msg="this server is a standby (in recovery); migrations run on the primary only")
        deadline = time.monotonic() + p["lock_timeout"]
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            if time.monotonic() > deadline:
                module.fail_json(msg=f"another migration run holds the lock; gave up after {p['lock_timeout']} s")
            time.sleep(0.5)

        exists = conn.execute("SELECT to_regclass('pgops.schema_migration') IS NOT NULL").fetchone()[0]
        ledger = []
        if exists:
            cur = conn.execute("SELECT version, name, checksum FROM pgops.schema_migration ORDER BY version")
            ledger = [{"version": v, "name": n, "checksum": c} for v, n, c in cur.fetchall()]
        try:
            pending = plan(files, ledger)
        except MigrationError as exc:
            module.fail_json(msg=str(exc))
        names = [m["name"] for m in pending]
        if module.check_mode or not pending:
            module.exit_json(changed=bool(pending), pending=names, applied=[])

        if not exists:
            with conn.transaction():
                conn.execute(LEDGER_DDL)
        applied = []
        for migration in pending:
            started = time.monotonic()
            try:
                with conn.transaction():
                    for name, value in sorted(p["settings"].items()):
                        conn.execute("SELECT set_config(%s, %s, true)", (name, str(value)))
                    conn.execute(migration["sql"].encode())
                    conn.execute(
                        "INSERT INTO pgops.schema_migration (version, name, checksum, duration_ms) "
                        "VALUES (%s, %s, %s, %s)",
                        (
                            migration["version"],
                            migration["name"],
                            migration["checksum"],
                            int((time.monotonic() - started) * 1000),
                        ),
                    )
            except psycopg.Error as exc:
                diag = exc.diag
                module.fail_json(
                    msg=(
                        f"migration {migration['name']} failed and was rolled back: {str(exc).strip()}"
                        + (f" (at: {diag.context.strip()})" if diag and diag.context else "")
                    ),
                    pending=names,
                    applied=applied,
                )
            applied.append(migration["name"])
        module.exit_json(changed=True, pending=names, applied=applied)


if __name__ == "__main__":
    main()

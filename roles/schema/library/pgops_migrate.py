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
  - Every migration runs with lock_timeout and statement_timeout; one that cannot get its locks in time is
    retried (lock_retries, doubling the pause), so a migration queued behind a long reader never stalls the
    payments behind it for more than lock_timeout.
  - A file whose first lines hold C(-- pgops: no-transaction) runs statement by statement outside a
    transaction (CREATE INDEX CONCURRENTLY); its ledger row is written once every statement succeeded, so its
    statements must be re-runnable (IF NOT EXISTS), and an invalid index left behind fails the run.
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
  ddl_lock_timeout: {type: str, default: 5s, description: lock_timeout of each migration statement.}
  statement_timeout: {type: str, default: 10min, description: statement_timeout of each migration statement.}
  lock_retries: {type: int, default: 5, description: Retries of a migration that hit lock_timeout.}
  login_unix_socket: {type: str, required: true, description: "Socket directory (the postgresql role's facts)."}
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
NO_TRANSACTION_RE = re.compile(r"^\s*--\s*pgops:\s*no-transaction\s*$", re.M)
INVALID_INDEXES = """
SELECT string_agg(i.indexrelid::regclass::text, ', ') FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT i.indisvalid AND c.relkind = 'i' AND n.nspname NOT IN ('pg_catalog', 'pg_toast')
"""
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
        parsed.append(
            {
                "version": version,
                "name": item["name"],
                "sql": item["sql"],
                "checksum": checksum,
                "transactional": not is_non_transactional(item["sql"]),
            }
        )
    return sorted(parsed, key=lambda m: m["version"])


def is_non_transactional(sql: str) -> bool:
    """The marker counts only in the comment lines before the first statement."""
    head = []
    for line in sql.splitlines():
        if line.strip() and not line.lstrip().startswith("--"):
            break
        head.append(line)
    return bool(NO_TRANSACTION_RE.search("\n".join(head)))


def split_statements(sql: str) -> list[str]:
    """Split SQL text into statements at top-level semicolons, leaving quoted
    strings, quoted identifiers, dollar-quoted bodies and comments whole."""
    statements, start, i, n = [], 0, 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in ("'", '"'):
            escapes = c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            i += 1
            while i < n:
                if (escapes and sql[i] == "\\") or sql.startswith(c * 2, i):
                    i += 2
                elif sql[i] == c:
                    i += 1
                    break
                else:
                    i += 1
        elif c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                tag = m.group(0)
                end = sql.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
            else:
                i += 1
        elif c == ";":
            statements.append(sql[start : i + 1])
            start = i = i + 1
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if strip_comments(s).strip()]


def strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


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


def record(conn, migration, started):
    conn.execute(
        "INSERT INTO pgops.schema_migration (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)",
        (migration["version"], migration["name"], migration["checksum"], int((time.monotonic() - started) * 1000)),
    )


def take_permit(conn, migration):
    """A migration is reviewed and recorded in the ledger: its transaction
    holds a permit for protected DDL (partitions and triggers of the audit
    trail, functions of the payments and pgops schemas), recorded with the
    migration's name, once the database has permits (V0014)."""
    if conn.execute("SELECT to_regprocedure('pgops.permit_protected_ddl(text)') IS NOT NULL").fetchone()[0]:
        conn.execute("SELECT pgops.permit_protected_ddl(%s)", (f"migration {migration['name']}",))


def apply(conn, migration, p, psycopg, sleep=time.sleep):
    """Apply one migration with its timeouts; retry it when it could not get
    its locks in time. Returns its duration in ms."""
    pause = 1.0
    for attempt in range(p["lock_retries"] + 1):
        started = time.monotonic()
        try:
            if migration["transactional"]:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (p["ddl_lock_timeout"],))
                    conn.execute("SELECT set_config('statement_timeout', %s, true)", (p["statement_timeout"],))
                    for name, value in sorted(p["settings"].items()):
                        conn.execute("SELECT set_config(%s, %s, true)", (name, str(value)))
                    take_permit(conn, migration)
                    conn.execute(migration["sql"].encode())
                    record(conn, migration, started)
            else:
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (p["ddl_lock_timeout"],))
                conn.execute("SELECT set_config('statement_timeout', %s, false)", (p["statement_timeout"],))
                try:
                    for name, value in sorted(p["settings"].items()):
                        conn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
                    for statement in split_statements(migration["sql"]):
                        conn.execute(statement.encode())
                finally:
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")
                invalid = conn.execute(INVALID_INDEXES).fetchone()[0]
                if invalid:
                    raise MigrationError(
                        f"invalid indexes after the run: {invalid} (a failed CREATE INDEX CONCURRENTLY leaves one: "
                        "drop it and run again)"
                    )
                with conn.transaction():
                    record(conn, migration, started)
            return int((time.monotonic() - started) * 1000)
        except psycopg.errors.LockNotAvailable:
            if attempt == p["lock_retries"]:
                raise
            sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")


def main():
    module = AnsibleModule(
        argument_spec={
            "database": {"type": "str", "required": True},
            "migrations": {"type": "list", "elements": "dict", "required": True},
            "settings": {"type": "dict", "default": {}},
            "lock_timeout": {"type": "int", "default": 60},
            "ddl_lock_timeout": {"type": "str", "default": "5s"},
            "statement_timeout": {"type": "str", "default": "10min"},
            "lock_retries": {"type": "int", "default": 5},
            "login_unix_socket": {"type": "str", "required": True},
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
            try:
                duration = apply(conn, migration, p, psycopg)
            except psycopg.Error as exc:
                diag = exc.diag
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    exc = f"{str(exc).strip()} ({p['lock_retries']} retries: a long transaction holds a lock it needs)"
                fate = (
                    "failed and was rolled back"
                    if migration["transactional"]
                    else "failed part-way (non-transactional: it runs again from the start next time)"
                )
                module.fail_json(
                    msg=(
                        f"migration {migration['name']} {fate}: {str(exc).strip()}"
                        + (f" (at: {diag.context.strip()})" if diag and diag.context else "")
                    ),
                    pending=names,
                    applied=applied,
                )
            except MigrationError as exc:
                module.fail_json(msg=f"migration {migration['name']}: {exc}", pending=names, applied=applied)
            applied.append(f"{migration['name']} ({duration} ms)")
        module.exit_json(changed=True, pending=names, applied=applied)


if __name__ == "__main__":
    main()

"""Nightly logical backups of the payments database to S3 (pgops-backup).

Installed on the database hosts by the `backup` role and run by its timer.
The planning parts (tiers, retention, manifests) are pure functions with unit
tests; the S3 and PostgreSQL parts use boto3 and psycopg from Debian.

    pgops-backup run [--now ISO]       dump, upload, verify, record, prune
    pgops-backup verify [ID|latest]    download and check the SHA-256
    pgops-backup list                  the manifests, newest first
    pgops-backup prune [--now ISO]     apply the retention policy only

A run that fails exits 1 with one log line and deletes nothing; on a standby
`run` exits 75, "not this host's turn" (the timer treats it as a success that
records no backup).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

try:  # on the hosts the two tools are installed side by side (roles/backup)
    from pgops_physical import TurnError, leader_in, patroni_get
except ImportError:  # on the controller and in the unit tests
    from pgops.physical import TurnError, leader_in, patroni_get

TIERS = ("daily", "weekly", "monthly")
NOT_MY_TURN = 75  # EX_TEMPFAIL; barman-cloud uses 1-4 for its own errors


@dataclass(frozen=True)
class Manifest:
    """What a backup is: written next to the dump as manifests/<id>.json."""

    id: str
    finished_at: dt.datetime
    key: str
    size: int
    sha256: str
    tiers: tuple[str, ...]
    extra: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "finished_at": self.finished_at.isoformat(),
                "key": self.key,
                "size": self.size,
                "sha256": self.sha256,
                "tiers": list(self.tiers),
                **self.extra,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        known = {"id", "finished_at", "key", "size", "sha256", "tiers"}
        return cls(
            id=data["id"],
            finished_at=dt.datetime.fromisoformat(data["finished_at"]),
            key=data["key"],
            size=int(data["size"]),
            sha256=data["sha256"],
            tiers=tuple(data["tiers"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def backup_id(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def tiers_for(when: dt.datetime, existing: list[Manifest]) -> tuple[str, ...]:
    """Every backup is daily; the first good one of an ISO week is also
    weekly, and the first of a calendar month also monthly."""
    tiers = ["daily"]
    week = when.isocalendar()[:2]
    if not any(m.finished_at.isocalendar()[:2] == week and "weekly" in m.tiers for m in existing):
        tiers.append("weekly")
    if not any((m.finished_at.year, m.finished_at.month) == (when.year, when.month) and "monthly" in m.tiers
               for m in existing):  # fmt: skip
        tiers.append("monthly")
    return tuple(tiers)


def plan_retention(manifests: list[Manifest], keep: dict[str, int]) -> tuple[list[Manifest], list[Manifest]]:
    """(kept, deleted): the newest keep[tier] backups of each tier are kept,
    and the newest backup always is, whatever the counts say."""
    newest_first = sorted(manifests, key=lambda m: m.finished_at, reverse=True)
    kept_ids: set[str] = set()
    for tier in TIERS:
        kept_ids |= {m.id for m in [m for m in newest_first if tier in m.tiers][: max(keep.get(tier, 0), 0)]}
    if newest_first:
        kept_ids.add(newest_first[0].id)
    kept = [m for m in newest_first if m.id in kept_ids]
    deleted = [m for m in newest_first if m.id not in kept_ids]
    return kept, deleted


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- runtime --
# Everything below runs on a database host (python3-boto3, python3-psycopg
# from Debian); those imports are local so that the planning above needs
# neither.

DEFAULT_CONFIG = "/etc/pgops/backup.json"


class BackupError(Exception):
    """A failure with a message an operator can act on."""


class NotPrimary(Exception):
    """The timer runs on every member; only the primary dumps."""


@dataclass
class Config:
    bucket: str
    prefix: str
    database: str
    staging_dir: str
    status_file: str
    # The server's, from the postgresql role's facts (no default: never guessed).
    pg_bindir: str
    socket_dir: str
    endpoint_url: str = ""
    region: str = "us-east-1"
    keep: dict = field(default_factory=lambda: {"daily": 7, "weekly": 4, "monthly": 6})
    port: int = 5432
    lock_file: str = "/run/lock/pgops-backup.lock"
    sse: str = "AES256"
    tables_to_count: list = field(default_factory=list)
    # The local Patroni, which says who leads ("" on a server without one).
    patroni_url: str = ""
    ca_file: str = ""

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path) as f:
            return cls(**json.load(f))

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix.strip("/"), *parts])


def s3_client(cfg: Config):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url or None,
        region_name=cfg.region,
        config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def s3_call(what: str, fn, *args, **kwargs):
    """Run one S3 call; any failure becomes a BackupError naming the step."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as e:
        raise BackupError(f"S3 {what} failed: {e}") from e


def list_manifests(cfg: Config, s3) -> list[Manifest]:
    manifests = []
    paginator = s3.get_paginator("list_objects_v2")
    pages = s3_call("listing", lambda: list(paginator.paginate(Bucket=cfg.bucket, Prefix=cfg.key("manifests/"))))
    for page in pages:
        for obj in page.get("Contents", []):
            body = s3_call("reading a manifest", s3.get_object, Bucket=cfg.bucket, Key=obj["Key"])["Body"].read()
            manifests.append(Manifest.from_json(body.decode()))
    return sorted(manifests, key=lambda m: m.finished_at, reverse=True)


def snapshot_facts(conn, tables: list[str]) -> dict:
    """Row counts, newest transaction time and schema ledger version, read in
    the snapshot the dump will use."""
    facts: dict = {"row_counts": {}}
    for table in tables:
        facts["row_counts"][table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
    row = conn.execute(
        "SELECT (SELECT max(created_at) FROM payments.transaction)::text, "
        "(SELECT max(version) FROM pgops.schema_migration)"
    ).fetchone()
    facts["newest_transaction_at"], facts["schema_version"] = row
    facts["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
    return facts


def leads_here(cfg: Config) -> None:
    """NotPrimary unless the local Patroni names this member the leader: the
    timer runs on every member and the HA manager decides which one dumps, so
    a failover needs no re-deploy. Without Patroni, the server's own recovery
    state decides (run_backup checks it in any case)."""
    if not cfg.patroni_url:
        return
    try:
        me = patroni_get(cfg, "/patroni")["patroni"]["name"]
        leader = leader_in(patroni_get(cfg, "/cluster")["members"])
    except (TurnError, KeyError, TypeError) as e:
        raise BackupError(f"cannot tell whether this member leads: {e}") from e
    if leader != me:
        raise NotPrimary(f"Patroni names {leader or 'no member'} the leader, not {me}: the dump runs on the leader")


def run_backup(cfg: Config, now: dt.datetime) -> Manifest:
    import psycopg

    s3 = s3_client(cfg)
    existing = list_manifests(cfg, s3)  # fails early, before any dump, when S3 is unreachable
    ident = backup_id(now)
    os.makedirs(cfg.staging_dir, exist_ok=True)
    with psycopg.connect(host=cfg.socket_dir, port=cfg.port, dbname=cfg.database, autocommit=True) as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise NotPrimary("this server is a standby: the nightly dump runs on the primary only")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        facts = snapshot_facts(conn, cfg.tables_to_count)
        with tempfile.NamedTemporaryFile(dir=cfg.staging_dir, prefix=f"{ident}-", suffix=".dump") as tmp:
            dump = subprocess.run(
                [f"{cfg.pg_bindir}/pg_dump", "--format=custom", f"--snapshot={snapshot}", "--file", tmp.name,
                 "--host", cfg.socket_dir, "--port", str(cfg.port), cfg.database],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            conn.execute("COMMIT")
            if dump.returncode != 0:
                raise BackupError(f"pg_dump failed: {dump.stderr.strip()}")
            digest, size = sha256_file(tmp.name), os.path.getsize(tmp.name)
            key = cfg.key("dumps", f"{ident}.dump")
            # Roles and memberships (no passwords), so a restore into a new cluster keeps owners and grants.
            globals_sql = subprocess.run(
                [f"{cfg.pg_bindir}/pg_dumpall", "--globals-only", "--no-role-passwords", "--host", cfg.socket_dir,
                 "--port", str(cfg.port)],
                capture_output=True, check=False,
            )  # fmt: skip
            if globals_sql.returncode != 0:
                raise BackupError(f"pg_dumpall --globals-only failed: {globals_sql.stderr.decode().strip()}")
            facts["globals_key"] = cfg.key("dumps", f"{ident}.globals.sql")
            facts["globals_sha256"] = hashlib.sha256(globals_sql.stdout).hexdigest()
            s3_call("upload of the globals", s3.put_object, Bucket=cfg.bucket, Key=facts["globals_key"],
                    Body=globals_sql.stdout, ServerSideEncryption=cfg.sse,
                    Metadata={"sha256": facts["globals_sha256"]})  # fmt: skip
            from boto3.s3.transfer import TransferConfig

            s3_call(
                "upload",
                s3.upload_file,
                tmp.name,
                cfg.bucket,
                key,
                ExtraArgs={"ServerSideEncryption": cfg.sse, "Metadata": {"sha256": digest}},
                Config=TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20),
            )
    head = s3_call("checking the upload", s3.head_object, Bucket=cfg.bucket, Key=key)
    if head["ContentLength"] != size or head["Metadata"].get("sha256") != digest:
        raise BackupError(f"uploaded object {key} does not match the local dump")
    manifest = Manifest(ident, now, key, size, digest, tiers_for(now, existing),
                        {"database": cfg.database, **facts})  # fmt: skip
    s3_call("writing the manifest", s3.put_object, Bucket=cfg.bucket, Key=cfg.key("manifests", f"{ident}.json"),
            Body=manifest.to_json().encode(), ServerSideEncryption=cfg.sse)  # fmt: skip
    prune(cfg, s3, [manifest, *existing])
    write_status(cfg, manifest)
    return manifest


def prune(cfg: Config, s3, manifests: list[Manifest]) -> list[Manifest]:
    _, deleted = plan_retention(manifests, cfg.keep)
    for m in deleted:
        s3_call("deleting an expired dump", s3.delete_object, Bucket=cfg.bucket, Key=m.key)
        if m.extra.get("globals_key"):
            s3_call("deleting expired globals", s3.delete_object, Bucket=cfg.bucket, Key=m.extra["globals_key"])
        s3_call("deleting a manifest", s3.delete_object, Bucket=cfg.bucket, Key=cfg.key("manifests", f"{m.id}.json"))
    return deleted


def write_status(cfg: Config, manifest: Manifest) -> None:
    status = {"finished_at": manifest.finished_at.isoformat(), "id": manifest.id, "key": manifest.key,
              "size": manifest.size, "sha256": manifest.sha256}  # fmt: skip
    tmp = f"{cfg.status_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, cfg.status_file)


def find(cfg: Config, s3, ident: str) -> Manifest:
    manifests = list_manifests(cfg, s3)
    if not manifests:
        raise BackupError(f"no backup under s3://{cfg.bucket}/{cfg.prefix}")
    if ident == "latest":
        return manifests[0]
    for m in manifests:
        if m.id == ident:
            return m
    raise BackupError(f"no backup {ident}")


def fetch(cfg: Config, ident: str, dest: str) -> Manifest:
    """Download a dump (and its globals, to DEST.globals.sql) and check both
    against the manifest."""
    s3 = s3_client(cfg)
    m = find(cfg, s3, ident)
    s3_call("download", s3.download_file, cfg.bucket, m.key, dest)
    digest = sha256_file(dest)
    if digest != m.sha256:
        raise BackupError(f"backup {m.id} is corrupt: SHA-256 {digest} != {m.sha256} in its manifest")
    if m.extra.get("globals_key"):
        s3_call("download of the globals", s3.download_file, cfg.bucket, m.extra["globals_key"], f"{dest}.globals.sql")
        if sha256_file(f"{dest}.globals.sql") != m.extra["globals_sha256"]:
            raise BackupError(f"backup {m.id}: its globals are corrupt (SHA-256 mismatch)")
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgops-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "prune"):
        p = sub.add_parser(name)
        p.add_argument("--now", help="ISO time to record instead of the clock (tests, simulations)")
    p = sub.add_parser("verify")
    p.add_argument("id", nargs="?", default="latest")
    p = sub.add_parser("fetch")
    p.add_argument("id")
    p.add_argument("dest")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        cfg = Config.load(args.config)
        now = dt.datetime.fromisoformat(args.now) if getattr(args, "now", None) else dt.datetime.now(dt.UTC)
        if args.command == "run":
            with open(cfg.lock_file, "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as e:
                    raise BackupError("another backup run holds the lock") from e
                try:
                    leads_here(cfg)
                    m = run_backup(cfg, now)
                except NotPrimary as e:
                    print(f"pgops-backup: skipped: {e}")
                    return NOT_MY_TURN
            print(f"pgops-backup: backup {m.id} ok: {m.size} bytes in {time.monotonic() - started:.1f} s, "
                  f"tiers {','.join(m.tiers)}, sha256 {m.sha256}")  # fmt: skip
        elif args.command == "prune":
            s3 = s3_client(cfg)
            deleted = prune(cfg, s3, list_manifests(cfg, s3))
            print(f"pgops-backup: pruned {len(deleted)} backup(s)")
        elif args.command == "verify":
            with tempfile.NamedTemporaryFile(dir=cfg.staging_dir, suffix=".dump") as tmp:
                m = fetch(cfg, args.id, tmp.name)
            print(f"pgops-backup: backup {m.id} verified ({m.size} bytes, sha256 {m.sha256})")
        elif args.command == "fetch":
            m = fetch(cfg, args.id, args.dest)
            print(json.dumps(json.loads(m.to_json())))
        else:
            for m in list_manifests(cfg, s3_client(cfg)):
                print(f"{m.id} {m.finished_at.isoformat()} {m.size} {','.join(m.tiers)} {m.key}")
    except (BackupError, OSError, ValueError) as e:
        print(f"pgops-backup: {args.command} FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

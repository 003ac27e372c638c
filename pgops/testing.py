"""Helpers shared by the Testinfra suites: SQL through the local socket, and
real client connections from the controller over the lab network."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from pgops import runner

PATRONI_PORT = 8008
# The lab-only CA lab/s3.sh signs the scenarios' S3 endpoints with.
S3_CA = str(Path(__file__).resolve().parents[1] / "lab/.state/s3-ca.crt")


def psql(host, sql: str, db: str = "postgres") -> str:
    """Run SQL as the postgres superuser over the local socket (peer auth) and
    return psql's unaligned output. Fails the test on any SQL error. Debian's
    psql wrapper reads the cluster's postgresql.conf first, which Patroni
    rewrites when the synchronous standbys change: a read in the middle of
    that finds no data directory, and is tried again."""
    for _ in range(5):
        result = host.run("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db, sql)
        if "Invalid data directory" not in result.stderr:
            break
        time.sleep(0.5)
    assert result.rc == 0, f"psql failed: {result.stderr}"
    return result.stdout.strip()


def psql_fails(host, sql: str, db: str = "postgres") -> str:
    """Run SQL as the superuser that must fail; return psql's error output."""
    result = host.run("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db, sql)
    assert result.rc != 0, f"expected an error, got: {result.stdout}"
    return result.stderr.strip()


def plant_default_partition_row(host, tag: str) -> None:
    """A payment dated three years ahead, beyond the premade partitions: it
    lands in payments.transaction_default. `tag` names its merchant and
    customer (unique per caller: letters, digits, underscores)."""
    assert re.fullmatch(r"\w+", tag), tag
    psql(
        host,
        "WITH m AS (INSERT INTO payments.merchant (name, country_code, default_currency) "  # noqa: S608 (tag checked)
        f"           VALUES ('{tag}', 'FR', 'EUR') RETURNING id), "
        f"c AS (SELECT payments.create_customer('{tag}', 'probe-password-{tag}', '{tag}@example.test', 'Probe') "
        "       AS id), "
        f"pm AS (SELECT payments.add_payment_method(c.id, 'card', 'tok_{tag}_' || md5(random()::text), 'Visa 4242') "
        "       AS id, c.id AS customer_id FROM c) "
        "INSERT INTO payments.transaction (created_at, merchant_id, customer_id, payment_method_id, amount, currency, "
        "status, device_type) SELECT now() + interval '3 years', m.id, pm.customer_id, pm.id, 100, 'EUR', 'pending', "
        "'desktop' FROM m, pm",
        "payments",
    )


def remove_default_partition_rows(host) -> None:
    """Remove the far-dated probe rows (the table is append-only: as a replica would)."""
    psql(
        host,
        "SET session_replication_role = replica; "
        "DELETE FROM payments.transaction_default WHERE created_at > now() + interval '2 years'",
        "payments",
    )


def host_address(host) -> str:
    """The host's address on the lab network (first global IPv4 of eth0)."""
    return next(a for a in host.interface("eth0").addresses if ":" not in a)


def setting(host, name: str) -> str:
    """A server setting, as the server reports it (paths included: the tests
    ask the server rather than repeat the roles' layout)."""
    return psql(host, f"SELECT current_setting('{name}')")


def fetch_ca(host, directory: Path) -> Path:
    """Copy the cluster CA certificate from a host to the controller."""
    path = directory / f"ca-{host.backend.host}.crt"
    path.write_text(host.file(setting(host, "ssl_ca_file")).content_string)
    return path


def patroni_get(address: str, ca: Path, path: str = "cluster", timeout: float = 3) -> tuple[int, dict]:
    """GET one of Patroni's REST endpoints over TLS (verifying the server);
    returns (HTTP status, JSON body). Health endpoints answer 503 with a body."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(f"https://{address}:{PATRONI_PORT}/{path}", timeout=timeout, context=context) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def patroni_members(addresses, ca: Path) -> list[dict]:
    """The members as the first Patroni that answers lists them."""
    for address in addresses:
        try:
            return patroni_get(address, ca)[1]["members"]
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError("no Patroni REST API answered")


def patroni_leader(addresses, ca: Path) -> str:
    """The leader's member name, as Patroni says ('' while there is none)."""
    return next((m["name"] for m in patroni_members(addresses, ca) if m["role"] == "leader"), "")


@dataclass
class LoginRole:
    name: str
    password: str


def load_project_module(relative: str):
    """A Python file of the project that is not in a package (a filter
    plugin, a role's module) as a module."""
    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_filter(name: str):
    """One of the project's filter plugins (plugins/filter/<name>.py) as a module."""
    return load_project_module(f"plugins/filter/{name}.py")


scram = load_filter("pgops_scram")


def create_login_role(host, prefix: str = "probe") -> LoginRole:
    """A throw-away login role with a random password, for remote probes. The
    server gets a SCRAM verifier, so the password never reaches its logs."""
    role = LoginRole(f"{prefix}_{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    psql(host, f"CREATE ROLE {role.name} LOGIN PASSWORD '{scram.scram_verifier(role.password)}'")
    return role


def create_payer(conn: psycopg.Connection, label: str, password: str, full_name: str) -> dict:
    """A merchant, then a customer and the customer's card token through the
    application's functions (payments.create_customer, add_payment_method;
    bind parameters only); returns their ids and the customer's username."""
    suffix = secrets.token_hex(4)
    username = f"{label}_{suffix}"
    merchant = conn.execute(
        "INSERT INTO payments.merchant (name, country_code, default_currency) VALUES (%s, 'FR', 'EUR') RETURNING id",
        (f"{label} shop {suffix}",),
    ).fetchone()[0]
    customer = conn.execute(
        "SELECT payments.create_customer(%s, %s, %s, %s)",
        (username, password, f"{username}@example.test", full_name),
    ).fetchone()[0]
    method = conn.execute(
        "SELECT payments.add_payment_method(%s, 'card', %s, 'Visa 4242')",
        (customer, f"tok_{label}_{secrets.token_hex(12)}"),
    ).fetchone()[0]
    return {"merchant": merchant, "customer": customer, "method": method, "username": username}


def connect(
    address: str, role: LoginRole, ca: Path | None, sslmode: str = "verify-full", dbname: str = "postgres", **kwargs
) -> psycopg.Connection:
    """A real client connection from the controller."""
    params = {
        "host": address,
        "port": 5432,
        "dbname": dbname,
        "user": role.name,
        "password": role.password,
        "sslmode": sslmode,
        "connect_timeout": 5,
    }
    if ca is not None:
        params["sslrootcert"] = str(ca)
    params.update(kwargs)
    return psycopg.connect(**params)


def run_playbook(
    playbook: str,
    extra_vars: dict | None = None,
    limit: str | None = None,
    check: bool = False,
    inventory: str | None = None,
) -> runner.JobResult:
    """Run one of the project's playbooks against the scenario's inventory
    (MOLECULE_INVENTORY_FILE) as an AWX job would: through ansible-runner,
    with a private data directory and none of the caller's ANSIBLE_*
    settings. The result has the run's status, rc (`returncode`), output,
    per-host stats and set_stats artifacts."""
    inventory = Path(inventory or os.environ["MOLECULE_INVENTORY_FILE"])
    return runner.run(playbook, inventory, extra_vars, check=check, limit=limit, job_timeout=900)


def recap_changed(output: str) -> dict[str, int]:
    """The changed= count per host from a PLAY RECAP."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)}


def member(name: str):
    """A scenario member's testinfra host, by inventory name."""
    import testinfra

    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def s3_client(endpoint: str):
    """A client of a scenario's S3 endpoint (moto behind stunnel, lab CA), with
    the keys the scenarios give the backup role."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="molecule-only-access-key",
        aws_secret_access_key="molecule-only-secret-key",  # noqa: S106 (the scenarios give moto these keys)
        verify=S3_CA,
    )


def bucket_keys(s3, prefix: str, bucket: str = "pgops-molecule-backups") -> set[str]:
    """Every key under `prefix`: a listing returns at most 1,000 keys a page."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def repo_info(host) -> dict:
    """pgBackRest's view of the stanza (info --output=json), from a member."""
    out = host.run("runuser -u postgres -- pgbackrest --stanza=payments --output=json info")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)[0]


def member_whose_turn(names) -> str:
    """What pgops-pgbackrest answers on the first of `names` that answers."""
    errors = []
    for name in names:
        out = member(name).run("runuser -u postgres -- /usr/local/sbin/pgops-pgbackrest turn")
        if out.rc == 0:
            return out.stdout.strip()
        errors.append(f"{name}: {out.stderr.strip()}")
    raise AssertionError(f"no member says whose turn it is: {errors}")


def physical_backup(kind: str, names) -> str:
    """A pgBackRest backup of KIND taken as its timer takes it, on the member
    whose turn it is; returns that member's name."""
    turn = member_whose_turn(names)
    started = member(turn).run(f"systemctl start pgops-pgbackrest-{kind}.service")
    assert started.rc == 0, member(turn).run(f"journalctl -u pgops-pgbackrest-{kind} -n 30 --no-pager").stdout
    return turn


def wait_archived(host, timeout: float = 120) -> None:
    """Switch WAL and wait until the segment is in the archive (the archiver
    waits 60 s after three failed attempts). A commit first: a switch out of
    an empty segment, as after a backup, does nothing, and it would never be
    archived."""
    psql(host, "SELECT txid_current()")
    segment = psql(host, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    psql(host, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while psql(host, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < deadline, "WAL was not archived"
        time.sleep(1)


def s3_cut_rule(host, endpoint: str) -> list[str]:
    """The controller's iptables rule (for -I, then -D) that resets the
    member's connections to the scenario's S3 endpoint: only its path to S3 is
    cut, the cluster's own network stays up (or Patroni would rightly fail over)."""
    port = urlsplit(endpoint).port
    return f"INPUT -s {host_address(host)} -p tcp --dport {port} -j REJECT --reject-with tcp-reset".split()

"""Fault trials on a Patroni cluster of systemd containers, shared by the
cluster scenario's HA tests and the failover benchmark: act on containers
with the Docker CLI (it works while a member is cut off from the network),
and read the cluster as Patroni reports it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg

from pgops.testing import patroni_members


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True)


def in_container(name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """A shell command in a member's container, without Ansible."""
    return docker("exec", name, "sh", "-c", command, check=check)


def sql_in(name: str, sql: str, db: str = "postgres") -> str | None:
    """SQL as postgres over the member's local socket (no shell between: the
    SQL is passed as is); None when it fails (the server is down, starting or
    refusing)."""
    out = docker("exec", name, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
                 "-d", db, "-c", sql, check=False)  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def members(addresses: Iterable[str], ca: Path) -> dict[str, dict]:
    """Patroni's member list, by name, from the first member that answers."""
    return {m["name"]: m for m in patroni_members(list(addresses), ca)}


def leader_in(view: dict[str, dict]) -> str:
    return next((name for name, m in view.items() if m["role"] == "leader"), "")


def is_healthy(view: dict[str, dict], size: int) -> bool:
    """One leader and every other member streaming on the leader's timeline."""
    leaders = [m for m in view.values() if m["role"] == "leader"]
    return (
        len(view) == size
        and len(leaders) == 1
        and all(
            m["state"] == "streaming" and m.get("timeline") == leaders[0].get("timeline")
            for m in view.values()
            if m["role"] != "leader"
        )
    )


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
    """Poll `check` until it returns something true; its value, or
    AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")


def lost_commits(conninfo: str, acked_ids: Iterable[int]) -> list[int]:
    """Acknowledged ids (pgops.writer) missing from the primary's probe table."""
    with psycopg.connect(conninfo) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM pgops_write_probe")}
    return sorted(set(acked_ids) - present)

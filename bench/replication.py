"""Replication benchmark on the lab (3 members): recovery time after killing
the primary (kill -> first acknowledged write through the multi-host string,
failover.yml included), rejoin time, the write pause of a switchover, and the
payment workload with synchronous vs asynchronous replication.

    .venv/bin/python bench/replication.py      (writes bench/results/replication.json)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pgops.testing import recap_changed, run_playbook, scram  # noqa: E402
from pgops.writer import TABLE_DDL, AckWriter, multi_host_conninfo  # noqa: E402

INVENTORY = str(PROJECT / "inventories/lab")
NODES = {"pg-primary": "172.29.57.10", "pg-standby": "172.29.57.11", "pg-standby2": "172.29.57.12"}


def psql(container: str, sql: str, db: str = "postgres") -> str:
    out = subprocess.run(
        ["docker", "exec", container, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", db, "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def playbook(name: str, **extra) -> float:
    started = time.monotonic()
    run = run_playbook(f"playbooks/{name}", extra or None, inventory=INVENTORY)
    if run.returncode != 0:
        sys.exit(f"{name} failed:\n{run.stdout[-3000:]}")
    return round(time.monotonic() - started, 1)


def current_primary() -> str:
    for name in NODES:
        try:
            if psql(name, "SELECT pg_is_in_recovery()") == "f":
                return name
        except subprocess.CalledProcessError:
            continue
    sys.exit("no primary in the lab")


def workload(label: str) -> dict:
    env = dict(os.environ, LABEL=label)
    subprocess.run(["bash", "bench/payment_workload.sh", current_primary()], cwd=PROJECT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return json.loads((PROJECT / f"bench/results/{label}.json").read_text())


def main() -> None:
    if current_primary() != "pg-primary":
        playbook("switchover.yml", switchover_target="pg-primary")
    role, password = f"bench_writer_{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    psql("pg-primary", f"CREATE ROLE {role} LOGIN PASSWORD '{scram.scram_verifier(password)}'")
    psql("pg-primary", f"{TABLE_DDL}; GRANT SELECT, INSERT ON pgops_write_probe TO {role}")
    ca = PROJECT / "bench/results/lab-ca.crt"
    ca.write_text(
        subprocess.run(
            ["docker", "exec", "pg-primary", "cat", "/etc/postgresql/15/main/tls/ca.crt"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    conninfo = multi_host_conninfo(list(NODES.values()), user=role, password=password, ca=ca)
    results: dict = {"members": len(NODES)}
    try:
        # Failover: kill the primary, run failover.yml, wait for the writer.
        writer = AckWriter(conninfo)
        writer.start()
        writer.wait_for(200)
        subprocess.run(["docker", "kill", "pg-primary"], check=True, capture_output=True)
        killed = time.monotonic()
        results["failover_playbook_s"] = playbook("failover.yml")
        writer.wait_for(50, since=killed)
        writer.stop()
        first = writer.first_ack_after(killed)
        results["recovery_s"] = round(first - killed, 1) if first else None

        # Rejoin the former primary.
        subprocess.run(["docker", "start", "pg-primary"], check=True, capture_output=True)
        subprocess.run(["docker", "exec", "pg-primary", "systemctl", "is-system-running", "--wait"],
                       capture_output=True)  # fmt: skip
        results["rejoin_playbook_s"] = playbook("rejoin.yml", rejoin_host="pg-primary")

        # Switch back, measuring the longest pause between acknowledged writes.
        writer = AckWriter(conninfo)
        writer.start()
        writer.wait_for(200)
        started = time.monotonic()
        results["switchover_playbook_s"] = playbook("switchover.yml", switchover_target="pg-primary")
        ended = time.monotonic()
        writer.wait_for(50, since=ended)
        writer.stop()
        results["switchover_write_pause_s"] = round(writer.longest_pause(started, ended), 2)

        # Payment workload, synchronous (the default) vs asynchronous.
        sync = workload("replication-sync")
        playbook("replication.yml", replication_synchronous=False)
        try:
            asynchronous = workload("replication-async")
        finally:
            playbook("replication.yml")
        results["payment_sync"] = {k: sync[k] for k in ("iterations_per_s", "latency_avg_ms")}
        results["payment_async"] = {k: asynchronous[k] for k in ("iterations_per_s", "latency_avg_ms")}
        rerun = run_playbook("site.yml", inventory=INVENTORY)
        results["site_rerun_changed"] = max(recap_changed(rerun.stdout).values())
    finally:
        psql(current_primary(), f"DROP TABLE IF EXISTS pgops_write_probe; DROP ROLE IF EXISTS {role}")
        ca.unlink(missing_ok=True)
    out = PROJECT / "bench/results/replication.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()

"""Failover benchmark on the lab (3 Patroni members), nothing but Patroni
acting: N trials each of `docker kill` of the leader and `docker network
disconnect` of the leader, in A B B A order, while the payment workload
runs on the leader and a client writes through the multi-host connection
string. Per trial: seconds from the fault to the first acknowledged write,
acknowledged commits lost, and seconds until the member is streaming again
once it is back (rejoin). Then a saturated soak (false failovers) and
switchovers (longest write pause).

    make bench-failover                      (TRIALS=10 SOAK=600 SWITCHOVERS=3)
    .venv/bin/python bench/failover.py --trials 10 --soak 600 --switchovers 3

Writes bench/results/failover.json (ignored by git) and docs/failover-recovery.png.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pgops import faults  # noqa: E402
from pgops.testing import run_playbook, scram  # noqa: E402
from pgops.writer import TABLE_DDL, AckWriter, multi_host_conninfo  # noqa: E402

INVENTORY = PROJECT / "inventories/lab"
RESULTS = PROJECT / "bench/results"
PLOT = PROJECT / "docs/failover-recovery.png"
TARGETS = {"median_s": 15, "max_s": 20, "switchover_pause_s": 5}


def lab():
    hosts = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]["postgresql"]["hosts"]
    network = yaml.safe_load((INVENTORY / "group_vars/all.yml").read_text())["lab_network"]
    return {name: h["lab_ip"] for name, h in hosts.items()}, network


class Lab:
    def __init__(self):
        self.nodes, self.network = lab()
        self.tmp = Path(tempfile.mkdtemp(prefix="pgops-bench-failover-"))
        leader = self.wait_healthy(ca=None)
        self.ca = self.tmp / "ca.crt"
        ca_file = faults.sql_in(leader, "SHOW ssl_ca_file")
        self.ca.write_text(faults.in_container(leader, f"cat {ca_file}").stdout)
        name, password = f"bench_writer_{secrets.token_hex(3)}", secrets.token_urlsafe(18)
        verifier = scram.scram_verifier(password)
        assert faults.sql_in(leader, f"CREATE ROLE {name} LOGIN PASSWORD '{verifier}'") is not None
        assert faults.sql_in(leader, f"{TABLE_DDL}; GRANT SELECT, INSERT ON pgops_write_probe TO {name}") is not None
        self.role = name
        self.conninfo = multi_host_conninfo(list(self.nodes.values()), user=name, password=password, ca=self.ca)

    def view(self, among=None):
        return faults.members(among or self.nodes.values(), self.ca)

    def leader(self, among=None) -> str:
        return faults.leader_in(self.view(among))

    def healthy(self) -> str:
        try:
            view = self.view()
        except AssertionError:
            return ""
        return faults.leader_in(view) if faults.is_healthy(view, len(self.nodes)) else ""

    def wait_healthy(self, ca, timeout=180) -> str:
        if ca is None:  # before the CA is known: ask PostgreSQL on each member

            def primary():
                found = [n for n in self.nodes if faults.sql_in(n, "SELECT pg_is_in_recovery()") == "f"]
                return found[0] if len(found) == 1 else ""

            return faults.wait_until(primary, timeout, "one primary")
        return faults.wait_until(self.healthy, timeout, "a leader and every member streaming")

    def workload(self, leader: str, seconds: int, clients: int = 8) -> subprocess.Popen:
        env = dict(os.environ, DURATION=str(seconds), CLIENTS=str(clients), OUT=str(self.tmp), LABEL="workload")
        return subprocess.Popen(["bash", "bench/payment_workload.sh", leader], env=env, cwd=PROJECT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def timeline(self, name: str) -> int:
        return self.view([self.nodes[name]])[name]["timeline"]


def trial(bench: Lab, kind: str) -> dict:
    old = bench.wait_healthy(bench.ca)
    workload = bench.workload(old, 45)  # ends by itself: killing the script leaves pgbench running
    writer = AckWriter(bench.conninfo)
    writer.start()
    try:
        assert writer.wait_for(100), writer.errors[-5:]
        time.sleep(3)  # the workload is running
        if kind == "kill":
            faults.docker("kill", old)
        else:
            faults.docker("network", "disconnect", bench.network, old)
        fault = time.monotonic()
        try:
            assert writer.wait_for(50, since=fault, timeout=120), writer.errors[-5:]
            recovery = writer.first_ack_after(fault) - fault
            others = [ip for n, ip in bench.nodes.items() if n != old]
            new = faults.wait_until(lambda: bench.leader(others), 60, "a new leader")
        finally:
            if kind == "kill":
                faults.docker("start", old)
            else:
                faults.docker("network", "connect", "--ip", bench.nodes[old], bench.network, old)
        back = time.monotonic()
        time.sleep(2)
    finally:
        writer.stop()
        workload.kill()
        workload.wait()
    lost = faults.lost_commits(bench.conninfo, [n for n, _ in writer.acked])
    leader = bench.wait_healthy(bench.ca)
    rejoin = time.monotonic() - back
    result = {"kind": kind, "old": old, "new": new, "recovery_s": round(recovery, 2), "lost": len(lost),
              "rejoin_s": round(rejoin, 1), "leader_after": leader}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def soak(bench: Lab, seconds: int) -> dict:
    """The payment workload saturating the leader (16 clients on 2 cores) for
    `seconds`: any change of leader or timeline is a false failover."""
    leader = bench.wait_healthy(bench.ca)
    timeline = bench.timeline(leader)
    workload = bench.workload(leader, seconds, clients=16)
    changes, last = 0, (leader, timeline)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(5)
        try:
            now = bench.leader()
            state = (now, bench.timeline(now)) if now else ("", -1)
        except AssertionError:
            state = ("", -1)
        if state != last and state[0]:
            changes += 1
            last = state
    workload.wait(timeout=120)
    result = {"seconds": seconds, "clients": 16, "false_failovers": changes, "workload_rc": workload.returncode}
    print(json.dumps({"soak": result}), flush=True)
    return result


def switchovers(bench: Lab, count: int) -> list[dict]:
    out = []
    for _ in range(count):
        old = bench.wait_healthy(bench.ca)
        writer = AckWriter(bench.conninfo)
        writer.start()
        try:
            assert writer.wait_for(100), writer.errors[-5:]
            start = time.monotonic()
            run = run_playbook("playbooks/switchover.yml", inventory=str(INVENTORY))
            assert run.returncode == 0, run.stdout[-3000:]
            assert writer.wait_for(50, since=time.monotonic()), writer.errors[-5:]
            pause = writer.longest_pause(start, time.monotonic())
        finally:
            writer.stop()
        lost = faults.lost_commits(bench.conninfo, [n for n, _ in writer.acked])
        new = bench.wait_healthy(bench.ca)
        result = {"old": old, "new": new, "pause_s": round(pause, 2), "lost": len(lost)}
        print(json.dumps({"switchover": result}), flush=True)
        out.append(result)
    return out


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median_s": round(statistics.median(values), 2), "max_s": round(max(values), 2)}


def plot(trials: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["kill", "partition"]
    data = [[t["recovery_s"] for t in trials if t["kind"] == k] for k in kinds]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.boxplot(data, vert=False, widths=0.5)
    for i, values in enumerate(data, start=1):
        ax.scatter(values, [i] * len(values), s=18, alpha=0.7, zorder=3)
    ax.set_yticks([1, 2], ["docker kill", "network cut"])
    ax.axvline(TARGETS["median_s"], linestyle="--", color="grey", linewidth=1)
    ax.axvline(TARGETS["max_s"], linestyle=":", color="grey", linewidth=1)
    ax.set_xlabel("seconds from the fault to the first acknowledged write (lines: 15 s and 20 s targets)")
    ax.set_title(f"Automatic failover, 2-core lab, payment workload on: {len(data[0])} + {len(data[1])} trials")
    fig.tight_layout()
    fig.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials of each fault (default 10)")
    parser.add_argument("--soak", type=int, default=600, help="saturated soak, seconds (default 600)")
    parser.add_argument("--switchovers", type=int, default=3)
    args = parser.parse_args()
    bench = Lab()
    started = time.monotonic()
    # A B B A: kill, partition, partition, kill, ...
    order = [("kill", "partition")[(i + i // 2) % 2] for i in range(2 * args.trials)]
    trials = [trial(bench, kind) for kind in order]
    soaked = soak(bench, args.soak) if args.soak else None
    switched = switchovers(bench, args.switchovers)
    faults.sql_in(bench.wait_healthy(bench.ca), f"DROP TABLE pgops_write_probe; DROP ROLE {bench.role}")
    report = {
        "trials": trials,
        "recovery": {k: summary([t["recovery_s"] for t in trials if t["kind"] == k]) for k in ("kill", "partition")},
        "rejoin": {k: summary([t["rejoin_s"] for t in trials if t["kind"] == k]) for k in ("kill", "partition")},
        "lost_commits": sum(t["lost"] for t in trials) + sum(s["lost"] for s in switched),
        "soak": soaked,
        "switchovers": switched,
        "switchover_pause": summary([s["pause_s"] for s in switched]) if switched else None,
        "targets": TARGETS,
        "duration_s": round(time.monotonic() - started),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(trials, PLOT)
    print(json.dumps({k: report[k] for k in ("recovery", "rejoin", "lost_commits", "soak", "switchover_pause")},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

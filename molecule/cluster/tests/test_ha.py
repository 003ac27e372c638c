"""Replication, failover, rejoin and switchover with real processes: a client
writes through the multi-host connection string the whole time and every
commit the server acknowledged must be on the primary at the end. The tests
run in order; each leaves the cluster in the state the next one expects
(every test takes the `host` fixture, so that pytest keeps the file order)."""

import json
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgops import runner
from pgops.testing import create_login_role, fetch_ca, psql, recap_changed, run_playbook
from pgops.writer import TABLE_DDL, AckWriter, multi_host_conninfo

testinfra_hosts = ["ansible://molecule-fo1"]

NODES = {"molecule-fo1": "172.29.62.10", "molecule-fo2": "172.29.62.11", "molecule-fo3": "172.29.62.12"}
UNIT = "postgresql@15-main"


def node(host, name):
    return host.get_host(f"ansible://{name}", ansible_inventory=host.backend.ansible_inventory)


def status(tmp_path):
    out = tmp_path / f"status-{time.monotonic_ns()}.json"
    run = run_playbook("playbooks/status.yml", {"status_file": str(out)})
    assert run.returncode == 0, run.stdout[-3000:]
    state = json.loads(out.read_text())
    return state["primary"], {m["host"]: m for m in state["members"]}


def wait_streaming(primary_host, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if psql(primary_host, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == str(count):
            return True
        time.sleep(1)
    return False


@pytest.fixture(scope="module")
def writer_conninfo(host, tmp_path_factory):
    """A login role and a table on the primary; the multi-host string the client uses."""
    primary = node(host, "molecule-fo1")
    role = create_login_role(primary, "writer")
    psql(primary, f"{TABLE_DDL}; GRANT SELECT, INSERT ON pgops_write_probe TO {role.name}")
    ca = fetch_ca(primary, tmp_path_factory.mktemp("ca"))
    return multi_host_conninfo(list(NODES.values()), user=role.name, password=role.password, ca=ca)


def acked_rows_present(conninfo, writer):
    with psycopg.connect(conninfo) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM pgops_write_probe")}
    lost = [n for n, _ in writer.acked if n not in present]
    return lost


def test_streaming_and_synchronous(host, tmp_path):
    primary, members = status(tmp_path)
    assert primary == "molecule-fo1"
    standbys = members["molecule-fo1"]["standbys"]
    assert sorted(s["name"] for s in standbys) == ["molecule_fo2", "molecule_fo3"]
    assert {s["state"] for s in standbys} == {"streaming"} and {s["sync_state"] for s in standbys} == {"quorum"}
    assert members["molecule-fo1"]["synchronous_standby_names"] == 'ANY 1 ("molecule_fo2", "molecule_fo3")'
    assert {s["slot"]: s["active"] for s in members["molecule-fo1"]["slots"]} == {
        "molecule_fo2": True,
        "molecule_fo3": True,
    }
    for name in ("molecule-fo2", "molecule-fo3"):
        assert members[name]["in_recovery"] and members[name]["receiver_status"] == "streaming"
        assert members[name]["upstream"] == NODES["molecule-fo1"]


def test_failover_loses_no_acknowledged_commit(host, writer_conninfo, tmp_path):
    writer = AckWriter(writer_conninfo)
    writer.start()
    try:
        assert writer.wait_for(200), writer.errors
        subprocess.run(["docker", "kill", "molecule-fo1"], check=True, capture_output=True)
        killed = time.monotonic()
        run = run_playbook("playbooks/failover.yml")
        assert run.returncode == 0, run.stdout[-4000:]
        # The client resumes by itself through the multi-host string.
        assert writer.wait_for(100, since=killed), writer.errors[-5:]
    finally:
        writer.stop()
    assert acked_rows_present(writer_conninfo, writer) == []
    primary, members = status(tmp_path)
    assert primary in ("molecule-fo2", "molecule-fo3")
    assert not members.get("molecule-fo1", {}).get("answered", False)
    assert members[primary]["timeline"] == 2
    other = next(n for n in ("molecule-fo2", "molecule-fo3") if n != primary)
    assert members[other]["upstream"] == NODES[primary] and members[other]["receiver_status"] == "streaming"


def test_a_second_failover_run_finishes_the_job_and_changes_nothing(host, tmp_path):
    run = run_playbook("playbooks/failover.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert max(recap_changed(run.stdout).values()) == 0, run.stdout[-6000:]


def test_old_primary_cannot_start_as_primary(host):
    subprocess.run(["docker", "start", "molecule-fo1"], check=True, capture_output=True)
    old = node(host, "molecule-fo1")
    deadline = time.monotonic() + 90
    while old.run(f"systemctl show -p ActiveState --value {UNIT}").stdout.strip() not in ("failed", "active"):
        assert time.monotonic() < deadline, "the server neither started nor failed"
        time.sleep(1)
    assert not old.service(UNIT).is_running
    journal = old.run(f"journalctl -u {UNIT} --no-pager").stdout
    assert "refusing to start 15-main as a primary" in journal, journal[-3000:]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host={NODES['molecule-fo1']} dbname=postgres user=nobody connect_timeout=3")


def test_rejoin_brings_it_back_as_a_standby(host, tmp_path):
    run = run_playbook("playbooks/rejoin.yml", {"rejoin_host": "molecule-fo1"})
    assert run.returncode == 0, run.stdout[-4000:]
    primary, members = status(tmp_path)
    assert members["molecule-fo1"]["in_recovery"] and members["molecule-fo1"]["receiver_status"] == "streaming"
    assert members["molecule-fo1"]["upstream"] == NODES[primary]
    again = run_playbook("playbooks/rejoin.yml", {"rejoin_host": "molecule-fo1"})
    assert again.returncode == 0 and max(recap_changed(again.stdout).values()) == 0, again.stdout[-3000:]


def test_switchover_back_loses_nothing(host, writer_conninfo, tmp_path):
    refused = run_playbook("playbooks/switchover.yml", {"switchover_target": "no-such-host"})
    assert refused.returncode != 0 and "Switchover refused, nothing changed" in refused.stdout
    writer = AckWriter(writer_conninfo)
    writer.start()
    try:
        assert writer.wait_for(100), writer.errors
        started = time.monotonic()
        run = run_playbook("playbooks/switchover.yml", {"switchover_target": "molecule-fo1"})
        assert run.returncode == 0, run.stdout[-4000:]
        assert writer.wait_for(100, since=time.monotonic()), writer.errors[-5:]
    finally:
        writer.stop()
    assert writer.acked_since(started) > 0
    assert acked_rows_present(writer_conninfo, writer) == []
    primary, members = status(tmp_path)
    assert primary == "molecule-fo1"
    assert all(members[n]["upstream"] == NODES["molecule-fo1"] for n in ("molecule-fo2", "molecule-fo3"))
    assert wait_streaming(node(host, "molecule-fo1"), 2)


def test_site_rerun_changes_nothing_and_keeps_the_roles(host, tmp_path):
    run = run_playbook("site.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert max(recap_changed(run.stdout).values()) == 0, run.stdout[-3000:]
    primary, members = status(tmp_path)
    assert primary == "molecule-fo1"
    assert members["molecule-fo2"]["in_recovery"] and members["molecule-fo3"]["in_recovery"]


def test_losing_one_synchronous_standby_does_not_stop_writes(host, writer_conninfo):
    subprocess.run(["docker", "stop", "molecule-fo3"], check=True, capture_output=True)
    try:
        with psycopg.connect(writer_conninfo, options="-c statement_timeout=10s") as conn:
            conn.execute("INSERT INTO pgops_write_probe (id) VALUES (-1)")
        assert psql(node(host, "molecule-fo1"), "SELECT count(*) FROM pgops_write_probe WHERE id = -1") == "1"
    finally:
        subprocess.run(["docker", "start", "molecule-fo3"], check=True, capture_output=True)
    node(host, "molecule-fo3").run("systemctl is-system-running --wait")
    assert wait_streaming(node(host, "molecule-fo1"), 2)


def test_awx_workflow_failover_rejoin_status(host, tmp_path):
    """The AWX workflow "Failover, rejoin, status" through ansible-runner,
    node after node as AWX runs it. The primary's server stops while its host
    stays up. Unconfirmed, the workflow stops at its first node with nothing
    changed. Confirmed, a standby is promoted, the former primary is fenced
    and handed to the Rejoin node (set_stats artifact), which rewinds it into
    a standby of the new primary; Status runs last."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    workflow = "Failover, rejoin, status"
    old = node(host, "molecule-fo1")
    assert old.run(f"systemctl stop {UNIT}").rc == 0
    unconfirmed = runner.run_workflow(workflow, inventory)
    assert [(i, r.status) for i, r in unconfirmed] == [("failover", "failed")]
    assert "Failover not confirmed (failover_confirm), nothing changed" in unconfirmed[0][1].stdout
    assert max(unconfirmed[0][1].changed().values()) == 0
    ran = runner.run_workflow(workflow, inventory, {"failover_confirm": "yes"})
    assert [(i, r.status) for i, r in ran] == [
        ("failover", "successful"),
        ("rejoin", "successful"),
        ("status", "successful"),
    ], "\n".join(r.stdout[-3000:] for _, r in ran)
    assert ran[0][1].artifacts["rejoin_host"] == "molecule-fo1"
    primary, members = status(tmp_path)
    assert primary in ("molecule-fo2", "molecule-fo3") and ran[0][1].artifacts["failover_promoted"] == primary
    assert members["molecule-fo1"]["in_recovery"] and members["molecule-fo1"]["receiver_status"] == "streaming"
    assert members["molecule-fo1"]["upstream"] == NODES[primary]
    assert not node(host, primary).file("/var/lib/pgops/fenced/molecule-fo1").exists

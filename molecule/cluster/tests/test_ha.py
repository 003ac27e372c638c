"""High availability with real processes, last in the cluster scenario: the
containers are killed, cut off and stopped, and nothing but Patroni acts
unless a test says so. A client writes through the multi-host connection
string the whole time and records every commit the server acknowledged;
every one of them must be on the primary at the end. The tests run in file
order, each leaving the cluster healthy (three members, two streaming) for
the next; they do not assume which member leads. Timings are printed (the
benchmark, `make bench-failover`, measures them over many trials)."""

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from conftest import (
    NETWORK,
    NODES,
    TTL,
    leader_of,
    member,
    members,
    physical_backup,
    repo_info,
    wait_archived,
    wait_healthy,
)

from pgops import runner
from pgops.faults import docker, in_container, lost_commits, sql_in, wait_until
from pgops.testing import create_login_role, patroni_get, psql, recap_changed, run_playbook
from pgops.writer import TABLE_DDL, AckWriter, PaymentClient, multi_host_conninfo


@pytest.fixture(scope="module")
def writer_conninfo(host, cluster_ca):
    """A login role and a table on the leader; the multi-host string the client uses."""
    role = create_login_role(host, "writer")
    psql(host, f"{TABLE_DDL}; GRANT SELECT, INSERT ON pgops_write_probe TO {role.name}")
    return multi_host_conninfo(list(NODES.values()), user=role.name, password=role.password, ca=cluster_ca)


@pytest.fixture(scope="module")
def pooled_conninfo(host, writer_conninfo, cluster_ca):
    """The same login, through the pooled read-write string (every member's
    HAProxy, port 5000, then PgBouncer on the primary), writing to a probe
    table in the payments database (the pooler serves only that one)."""
    user = dict(p.split("=", 1) for p in writer_conninfo.split())
    psql(host, f"GRANT CONNECT ON DATABASE payments TO {user['user']}")
    psql(
        host,
        f"{TABLE_DDL}; GRANT USAGE ON SCHEMA public TO {user['user']}; "
        f"GRANT SELECT, INSERT ON pgops_write_probe TO {user['user']}",
        db="payments",
    )
    return multi_host_conninfo(
        list(NODES.values()), user=user["user"], password=user["password"], ca=cluster_ca, dbname="payments",
        attrs="any", port=5000,
    )  # fmt: skip


@pytest.fixture(scope="module")
def app_conninfo(cluster_ca):
    """The application's login (payments_app), through the multi-host string."""
    return multi_host_conninfo(
        list(NODES.values()), user="m_app", password="molecule-app-password-01", ca=cluster_ca, dbname="payments"
    )


@pytest.fixture(scope="module")
def ha_payer(host):
    """A merchant, a customer and a card to pay with (made as the superuser:
    nothing to clean up on a leader that may be gone by then)."""
    ids = psql(
        host,
        "WITH m AS (INSERT INTO payments.merchant (name, country_code, default_currency) "
        "           VALUES ('ha shop ' || md5(random()::text), 'FR', 'EUR') RETURNING id), "
        "c AS (SELECT payments.create_customer('ha_' || md5(random()::text), 'ha-customer-password-1', "
        "                                      'ha_' || md5(random()::text) || '@example.test', 'Ha Client') AS id) "
        "SELECT m.id, c.id, payments.add_payment_method(c.id, 'card', 'tok_ha_' || md5(random()::text), 'Visa 4242') "
        "FROM m, c",
        db="payments",
    ).split("|")
    return dict(zip(("merchant", "customer", "method"), map(int, ids), strict=True))


class Trial:
    """A fault under load: the writer (and optionally the payment client)
    runs before, during and after it."""

    def __init__(self, conninfo, payments=None):
        self.writer = AckWriter(conninfo)
        self.payments = payments
        self.conninfo = conninfo

    def __enter__(self):
        self.writer.start()
        if self.payments:
            self.payments.start()
        assert self.writer.wait_for(100), self.writer.errors[-5:]
        return self

    def __exit__(self, *exc):
        self.writer.stop()
        if self.payments:
            self.payments.stop()

    def resumed_after(self, moment, count=50, timeout=90):
        assert self.writer.wait_for(count, since=moment, timeout=timeout), self.writer.errors[-5:]
        return self.writer.first_ack_after(moment) - moment


def test_replication_is_streaming_and_quorum_synchronous(host, cluster_ca, tmp_path):
    leader = wait_healthy(cluster_ca)
    out = tmp_path / "status.json"
    run = run_playbook("playbooks/status.yml", {"status_file": str(out)})
    assert run.returncode == 0, run.stdout[-3000:]
    state = json.loads(out.read_text())
    assert state["leader"] == leader
    view = {m["host"]: m for m in state["members"]}
    standbys = sorted(n for n in NODES if n != leader)
    assert sorted(s["name"] for s in view[leader]["standbys"]) == standbys
    assert {s["state"] for s in view[leader]["standbys"]} == {"streaming"}
    assert {s["sync_state"] for s in view[leader]["standbys"]} == {"quorum"}
    assert view[leader]["synchronous_standby_names"] == f"ANY 1 ({','.join(standbys)})"
    assert {s["slot"]: s["active"] for s in view[leader]["slots"]} == dict.fromkeys(standbys, True)
    for name in standbys:
        assert view[name]["in_recovery"] and view[name]["receiver_status"] == "streaming"
        assert view[name]["upstream"] == NODES[leader]
        assert view[name]["patroni"]["role"] == "quorum_standby"
    assert state["connection_strings"]["primary"].endswith("target_session_attrs=read-write")


def test_patroni_api_is_tls_and_changes_need_credentials(host, cluster_ca):
    address = NODES[host.backend.host]
    assert patroni_get(address, cluster_ca, "primary")[0] == 200
    assert patroni_get(NODES[next(n for n in NODES if n != host.backend.host)], cluster_ca, "primary")[0] == 503
    # A change without credentials is refused; plain HTTP is not served.
    refused = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(cluster_ca), "-X", "POST",
         "-d", "{}", f"https://{address}:8008/restart"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.stdout == "401"
    plain = subprocess.run(["curl", "-s", "-m", "3", f"http://{address}:8008/health"], capture_output=True, check=False)
    assert plain.returncode != 0 or b"running" not in plain.stdout


def test_overload_is_not_death(host, cluster_ca, writer_conninfo, tmp_path):
    """Every connection slot taken and the payment workload saturating the
    leader's CPUs, for longer than the TTL: no failover."""
    leader = host.backend.host
    timeline = members(cluster_ca)[leader]["timeline"]
    workload = subprocess.Popen(
        ["bash", "bench/payment_workload.sh", leader],
        env=dict(os.environ, DURATION=str(TTL + 10), CLIENTS="16", OUT=str(tmp_path), LABEL="overload",
                 BENCH_USER="m_app", BENCH_PASSWORD="molecule-app-password-01"),
        cwd=os.environ["PROJECT_DIR"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    held = []
    try:
        wait_until(
            lambda: sql_in(
                leader, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'm_app' AND application_name = 'pgbench'"
            ) == "16",
            120, "the payment workload's 16 clients",
        )  # fmt: skip
        while True:  # until the server refuses: every non-reserved slot is taken
            try:
                held.append(psycopg.connect(writer_conninfo))
            except psycopg.OperationalError as e:
                assert "too many clients" in str(e) or "remaining connection slots" in str(e), e
                break
            assert len(held) < 1000
        assert len(held) > 50  # max_connections 100 (molecule.yml)
        time.sleep(TTL + 5)
        assert leader_of(cluster_ca) == leader
        assert members(cluster_ca)[leader]["timeline"] == timeline
    finally:
        for conn in held:
            conn.close()
        out, _ = workload.communicate(timeout=120)
    assert workload.returncode == 0, out[-2000:]
    assert wait_healthy(cluster_ca) == leader


def test_node_loss_fails_over_by_itself_and_loses_nothing(
    host, cluster_ca, writer_conninfo, pooled_conninfo, app_conninfo, ha_payer
):
    """docker kill of the leader's container, no playbook: writes resume on a
    new leader, through the direct multi-host string and through the same
    pooled read-write string (HAProxy + PgBouncer, no reconfiguration); no
    acknowledged commit is lost on either, every payment exists exactly once,
    and the killed member rejoins by itself once it is back."""
    old = wait_healthy(cluster_ca)
    timeline = members(cluster_ca)[old]["timeline"]
    app = PaymentClient(app_conninfo, ha_payer, prefix="kill")
    pooled = AckWriter(pooled_conninfo)
    pooled.start()
    try:
        assert pooled.wait_for(100), pooled.errors[-5:]
        with Trial(writer_conninfo, payments=app) as trial:
            assert trial.writer.wait_for(100)
            docker("kill", old)
            killed = time.monotonic()
            recovery = trial.resumed_after(killed)
            assert pooled.wait_for(50, since=killed, timeout=90), pooled.errors[-5:]
            time.sleep(2)
    finally:
        pooled.stop()
    print(f"node loss: first acknowledged write {recovery:.1f} s after the kill "
          f"({pooled.first_ack_after(killed) - killed:.1f} s through HAProxy + PgBouncer)")  # fmt: skip
    assert lost_commits(writer_conninfo, [n for n, _ in trial.writer.acked]) == []
    assert lost_commits(pooled_conninfo, [n for n, _ in pooled.acked]) == []
    others = [NODES[n] for n in NODES if n != old]
    new = wait_until(lambda: leader_of(cluster_ca, others) not in ("", old) and leader_of(cluster_ca, others),
                     30, "a new leader")  # fmt: skip
    assert new != old
    assert members(cluster_ca, [NODES[new]])[new]["timeline"] == timeline + 1

    # Exactly once: one transaction per key, the one the client was told about.
    assert app.failures == [] and app.unanswered == [] and len(app.answers) > 10
    rows = psql(
        member(new),
        "SELECT k.idempotency_key || ' ' || t.id || ' ' || count(*) OVER (PARTITION BY k.idempotency_key) "
        "FROM payments.idempotency_key k JOIN payments.transaction t "
        "ON t.id = k.transaction_id AND t.created_at = k.transaction_created_at "
        f"WHERE k.merchant_id = {ha_payer['merchant']} AND k.idempotency_key LIKE 'kill-%'",
        db="payments",
    ).splitlines()
    seen = {key: (int(txn), int(n)) for key, txn, n in (r.split() for r in rows)}
    assert set(seen) == set(app.answers)
    assert all(n == 1 for _, n in seen.values())
    assert {k: v[0] for k, v in seen.items()} == {k: a[0] for k, a in app.answers.items()}
    total = psql(
        member(new),
        f"SELECT count(*) FROM payments.transaction WHERE merchant_id = {ha_payer['merchant']}",
        db="payments",
    )
    assert int(total) == len(app.answers)
    print(f"node loss: {len(app.answers)} payments, {len(app.retried)} retried after the kill, each exactly once")

    docker("start", old)
    started = time.monotonic()
    assert wait_healthy(cluster_ca) == new
    print(f"node loss: killed member streaming again {time.monotonic() - started:.1f} s after docker start")
    assert members(cluster_ca)[old]["role"] in ("replica", "quorum_standby", "sync_standby")


def test_after_the_failover_the_new_leader_archives_backs_up_and_recovers_across_it(cluster_ca):
    """No re-deploy after the failover above: the new leader archives at once,
    the next backup (an incremental on the previous timeline's full) succeeds
    on the member whose turn it is, and a point-in-time restore to a moment on
    the new timeline starts from a backup of the old one and replays across
    the switch."""
    leader = member(wait_healthy(cluster_ca))
    timeline = int(psql(leader, "SELECT timeline_id FROM pg_control_checkpoint()"))
    newest = repo_info(leader)["backup"][-1]
    assert int(newest["archive"]["start"][:8], 16) < timeline, "no backup from before the failover"
    psql(leader, f"CREATE TABLE failover_marker (tl int); INSERT INTO failover_marker VALUES ({timeline})")
    time.sleep(1.1)
    target = psql(leader, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
    time.sleep(1.1)
    psql(leader, "INSERT INTO failover_marker VALUES (-1)")  # recovery to a time stops at the next commit
    wait_archived(leader)
    time.sleep(1.1)
    physical_backup("incr")
    assert repo_info(leader)["backup"][-1]["type"] == "incr"
    try:
        run = run_playbook(
            "playbooks/restore.yml",
            {"restore_host": leader.backend.host, "restore_mode": "pitr", "restore_target_time": target,
             "restore_cluster": "pitr_tl", "restore_port": 5435},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:]
        copy = "runuser -u postgres -- psql -XAtq -p 5435 -d postgres -c %s"
        assert leader.run(copy, "SELECT tl FROM failover_marker").stdout.strip() == str(timeline)
        assert int(leader.run(copy, "SELECT timeline_id FROM pg_control_checkpoint()").stdout) > timeline
    finally:
        leader.run("pg_dropcluster --stop $(pg_lsclusters -h | awk '$2 == \"pitr_tl\" {print $1}') pitr_tl")
        psql(leader, "DROP TABLE IF EXISTS failover_marker")


def test_partition_fences_the_old_leader(host, cluster_ca, writer_conninfo):
    """docker network disconnect of the leader. A client inside its container
    (pinned to it: nothing else reaches it) keeps writing. The old leader
    stops acknowledging by itself within the TTL, no write is acknowledged by
    it after the new leader's promotion, and when the network is back it
    rejoins as a replica with every acknowledged commit on the new leader."""
    old = wait_healthy(cluster_ca)
    pinned_log = "/var/tmp/pinned-acks"
    pinned = (
        f"rm -f {pinned_log}; n=-$(date +%s)000000; end=$(( $(date +%s) + 75 )); "
        f"while [ $(date +%s) -lt $end ]; do n=$((n-1)); "
        f'runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c "INSERT INTO pgops_write_probe (id) VALUES ($n)" '
        f'>/dev/null 2>&1 && echo "$n $(date +%s.%N)" >> {pinned_log}; sleep 0.05; done'
    )
    pinned_client = subprocess.Popen(["docker", "exec", old, "timeout", "90", "sh", "-c", pinned])
    others = [NODES[n] for n in NODES if n != old]
    with Trial(writer_conninfo) as trial:
        time.sleep(2)
        docker("network", "disconnect", NETWORK, old)
        cut, cut_wall = time.monotonic(), time.time()
        try:
            demoted = wait_until(
                lambda: sql_in(old, "SELECT pg_is_in_recovery()") in ("t", None), TTL + 10,
                "the old leader demotes itself", interval=0.5,
            )  # fmt: skip
            demoted_after = time.monotonic() - cut
            new = wait_until(lambda: leader_of(cluster_ca, others) not in ("", old) and leader_of(cluster_ca, others),
                             60, "a new leader")  # fmt: skip
            recovery = trial.resumed_after(cut)
        finally:
            docker("network", "connect", "--ip", NODES[old], NETWORK, old)
        reconnected = time.monotonic()
        pinned_client.wait(timeout=120)
        assert trial.writer.wait_for(50, since=time.monotonic())
    print(f"partition: old leader in recovery {demoted_after:.1f} s after the cut ({demoted}); "
          f"writes resumed after {recovery:.1f} s")  # fmt: skip
    assert demoted_after <= TTL
    # The new leader's promotion, from Patroni's timeline history:
    history = patroni_get(NODES[new], cluster_ca, "history")[1]
    promoted_at = dt.datetime.fromisoformat(history[-1][3]).timestamp()
    # [timeline, LSN, reason, when it ended, the leader promoted then]
    assert history[-1][4] == new and promoted_at > cut_wall
    acks = [line.split() for line in in_container(old, f"cat {pinned_log}").stdout.splitlines()]
    assert acks, "the pinned client never wrote"
    last_pinned = max(float(t) for _, t in acks)
    assert last_pinned < promoted_at, f"the old leader acknowledged a write {last_pinned - promoted_at:.2f} s late"
    assert last_pinned < cut_wall + TTL
    assert wait_healthy(cluster_ca) == new
    print(f"partition: old leader streaming again {time.monotonic() - reconnected:.1f} s after the network returned")
    acked = [n for n, _ in trial.writer.acked] + [int(n) for n, _ in acks]
    assert lost_commits(writer_conninfo, acked) == []


def test_switchover_loses_nothing_and_the_pause_is_short(host, cluster_ca, writer_conninfo):
    old = wait_healthy(cluster_ca)
    refused = run_playbook("playbooks/switchover.yml", {"switchover_target": "no-such-host"})
    assert refused.returncode != 0 and "Switchover refused, nothing changed" in refused.stdout
    target = sorted(n for n in NODES if n != old)[0]
    with Trial(writer_conninfo) as trial:
        started = time.monotonic()
        run = run_playbook("playbooks/switchover.yml", {"switchover_target": target})
        assert run.returncode == 0, run.stdout[-4000:]
        assert trial.writer.wait_for(100, since=time.monotonic())
        ended = time.monotonic()
    pause = trial.writer.longest_pause(started, ended)
    print(f"switchover: longest write pause {pause:.1f} s")
    assert lost_commits(writer_conninfo, [n for n, _ in trial.writer.acked]) == []
    assert wait_healthy(cluster_ca) == target


def test_losing_etcd_members(host, cluster_ca, writer_conninfo):
    """One etcd member down: no failover, writes go on. Quorum lost (two
    down): failsafe mode keeps the leader primary as long as every member
    answers it; no second primary, and writes go on. Quorum back: nothing moved."""
    leader = wait_healthy(cluster_ca)
    timeline = members(cluster_ca)[leader]["timeline"]
    standbys = sorted(n for n in NODES if n != leader)
    with Trial(writer_conninfo) as trial:
        try:
            in_container(standbys[0], "systemctl stop etcd")
            moment = time.monotonic()
            time.sleep(TTL)
            assert trial.writer.acked_since(moment) > 100
            assert leader_of(cluster_ca) == leader
            in_container(leader, "systemctl stop etcd")
            moment = time.monotonic()
            for _ in range(int(TTL * 1.5)):
                primaries = [n for n in NODES if sql_in(n, "SELECT pg_is_in_recovery()") == "f"]
                assert primaries == [leader], primaries
                time.sleep(1)
            assert trial.writer.acked_since(moment) > 100, "writes stopped while etcd had no quorum"
            assert trial.writer.longest_pause(moment, time.monotonic()) < 5
        finally:
            for name in (standbys[0], leader):
                in_container(name, "systemctl start etcd")
    assert wait_healthy(cluster_ca) == leader
    assert members(cluster_ca)[leader]["timeline"] == timeline
    assert lost_commits(writer_conninfo, [n for n, _ in trial.writer.acked]) == []


def test_losing_one_synchronous_standby_does_not_stop_writes(host, cluster_ca, writer_conninfo):
    leader = wait_healthy(cluster_ca)
    standby = sorted(n for n in NODES if n != leader)[-1]
    with Trial(writer_conninfo) as trial:
        docker("stop", standby)
        moment = time.monotonic()
        try:
            assert trial.writer.wait_for(200, since=moment, timeout=60), trial.writer.errors[-5:]
        finally:
            docker("start", standby)
    assert wait_healthy(cluster_ca) == leader
    assert lost_commits(writer_conninfo, [n for n, _ in trial.writer.acked]) == []


def test_awx_workflow_manual_failover_when_patroni_will_not(host, cluster_ca):
    """The case automatic failover leaves to a person: the leader's PostgreSQL
    and Patroni die (its host stays up) together with one of the two quorum
    standbys. The survivor cannot know it has every acknowledged commit, so
    Patroni does not promote it. The AWX workflow "Failover, rejoin, status",
    through ansible-runner node after node as AWX runs it: unconfirmed, it
    stops at its first node with nothing changed; confirmed, the survivor is
    promoted, the former leader is handed to Rejoin (set_stats), which starts
    its Patroni and waits until it streams; Status runs last."""
    leader = wait_healthy(cluster_ca)
    survivor, lost = sorted(n for n in NODES if n != leader)
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    workflow = "Failover, rejoin, status"
    in_container(leader, "systemctl kill -s KILL --kill-who=all patroni; systemctl stop patroni")
    docker("kill", lost)
    try:
        wait_until(lambda: not leader_of(cluster_ca, [NODES[survivor]]), TTL + 15, "the leader lock expires")
        time.sleep(5)
        assert members(cluster_ca, [NODES[survivor]])[survivor]["role"] != "leader"
        assert sql_in(survivor, "SELECT pg_is_in_recovery()") == "t"

        unconfirmed = runner.run_workflow(workflow, inventory, {"failover_candidate": survivor})
        assert [(i, r.status) for i, r in unconfirmed] == [("failover", "failed")]
        assert "Failover not confirmed (failover_confirm), nothing changed" in unconfirmed[0][1].stdout
        assert max(unconfirmed[0][1].changed().values(), default=0) == 0

        ran = runner.run_workflow(workflow, inventory, {"failover_candidate": survivor, "failover_confirm": "yes"})
        assert [(i, r.status) for i, r in ran] == [
            ("failover", "successful"),
            ("rejoin", "successful"),
            ("status", "successful"),
        ], "\n".join(r.stdout[-3000:] for _, r in ran)
        assert ran[0][1].artifacts["failover_promoted"] == survivor
        assert ran[0][1].artifacts["rejoin_host"] == leader
        view = members(cluster_ca, [NODES[survivor], NODES[leader]])
        assert view[survivor]["role"] == "leader" and view[leader]["state"] == "streaming"
    finally:
        docker("start", lost)
    assert wait_healthy(cluster_ca) == survivor


def test_site_rerun_changes_nothing_and_keeps_the_leader(host, cluster_ca):
    """After all of the above, a deploy changes nothing and does not move the
    leader back to the inventory's first member."""
    leader = wait_healthy(cluster_ca)
    run = run_playbook("site.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert max(recap_changed(run.stdout).values()) == 0, run.stdout[-5000:]
    assert leader_of(cluster_ca) == leader

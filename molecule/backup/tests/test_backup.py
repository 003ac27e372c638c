"""Backups to a real S3 API (moto) and real restores: the nightly job, tiered
retention over a simulated calendar, a logical restore equal to the source,
point-in-time recovery, an S3 outage, a corrupted dump and the restore drill."""

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

from conftest import (
    NODES,
    S3_CA,
    S3_ENDPOINT,
    USERS,
    bucket_keys,
    member,
    member_whose_turn,
    physical_backup,
    repo_info,
    wait_archived,
)

from pgops.backup import Manifest, backup_id, plan_retention, tiers_for
from pgops.faults import wait_until
from pgops.testing import psql, recap_changed, run_playbook, s3_cut_rule

BUCKET = "pgops-molecule-backups"
PREFIX = "pgops/payments/logical/dumps/"


def major(host):
    return psql(host, "SELECT current_setting('server_version_num')::int / 10000")


def tool(host, *args, config="/etc/pgops/backup.json"):
    return host.run("runuser -u postgres -- /usr/local/sbin/pgops-backup --config %s " + " ".join(args), config)


def latest_manifest(host):
    out = tool(host, "list")
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


def table_digests(host, port):
    """Row count and an md5 of the ordered rows of every table of the payments schema."""
    tables = psql(
        host,
        "SELECT string_agg(format('%I.%I', schemaname, tablename), ' ' ORDER BY tablename) FROM pg_tables "
        "WHERE schemaname = 'payments'",
        db="payments",
    ).split()
    sql = (
        "SELECT * FROM ("
        + " UNION ALL ".join(
            f"SELECT '{t}' AS t, count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
            for t in tables
        )
        + ") d ORDER BY t"
    )
    out = host.run("runuser -u postgres -- psql -XAtq -p %s -d payments -c %s", str(port), sql)
    assert out.rc == 0, out.stderr
    return out.stdout


def test_bucket_is_private_encrypted_and_versioned(host, s3):
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values())


def test_the_endpoint_is_reached_over_verified_tls(host):
    """Keys and backups travel over HTTPS only, and the endpoint's certificate
    is checked: against the lab CA the role installed, it is accepted; against
    the system's CAs alone (which never signed it), every call is refused."""
    assert S3_ENDPOINT.startswith("https://")
    aws_config = host.file(f"{host.user('postgres').home}/.aws/config")
    assert "ca_bundle = /etc/pgops/s3-ca.crt" in aws_config.content_string
    assert host.file("/etc/pgops/s3-ca.crt").content_string == Path(S3_CA).read_text()
    assert tool(host, "list").rc == 0
    other_cas = host.run(
        "AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt runuser -u postgres --preserve-environment -- "
        "/usr/local/sbin/pgops-backup --config /etc/pgops/backup.json list"
    )
    assert other_cas.rc != 0
    assert "CERTIFICATE_VERIFY_FAILED" in other_cas.stderr or "certificate verify failed" in other_cas.stderr


def test_nightly_job_uploads_a_verified_dump(host, s3):
    assert host.run("systemctl is-enabled pgops-backup.timer").stdout.strip() == "enabled"
    assert "00:00:00" in host.file("/etc/systemd/system/pgops-backup.timer").content_string
    started = host.run("systemctl start pgops-backup.service")
    assert started.rc == 0, host.run("journalctl -u pgops-backup --no-pager | tail -20").stdout
    ident = latest_manifest(host)
    manifest = Manifest.from_json(
        s3.get_object(Bucket=BUCKET, Key=f"pgops/payments/logical/manifests/{ident}.json")["Body"].read().decode()
    )
    head = s3.head_object(Bucket=BUCKET, Key=manifest.key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == manifest.sha256 and head["ContentLength"] == manifest.size
    assert manifest.tiers == ("daily", "weekly", "monthly")  # the first backup ever
    assert manifest.extra["row_counts"]["payments.merchant"] >= 0 and manifest.extra["schema_version"] >= 11
    verify = tool(host, "verify", ident)
    assert verify.rc == 0 and "verified" in verify.stdout
    status = json.loads(host.file("/var/lib/pgops/backup/last_success.json").content_string)
    assert status["id"] == ident


def test_only_the_member_patroni_names_leader_dumps(host):
    """Every member carries the nightly timer; on the standby the run asks
    Patroni, stands down (75, nothing recorded) and never reaches S3."""
    standby = member(next(n for n in NODES if n != host.backend.host))
    out = standby.run("runuser -u postgres -- /usr/local/sbin/pgops-backup run")
    assert out.rc == 75, out.stderr
    assert f"Patroni names {host.backend.host} the leader" in out.stdout


def test_retention_over_sixty_simulated_days(host, s3):
    """Sixty nightly runs with injected dates into their own prefix keep
    exactly the daily/weekly/monthly set the policy names."""
    config = json.loads(host.file("/etc/pgops/backup.json").content_string)
    config.update(prefix="simulation/logical", keep={"daily": 7, "weekly": 4, "monthly": 3},
                  status_file="/var/lib/pgops/backup/simulation-status.json")  # fmt: skip
    host.run("install -o root -g postgres -m 0640 /dev/null /etc/pgops/backup-sim.json")
    subprocess.run(["docker", "exec", "-i", host.backend.host, "sh", "-c", "cat > /etc/pgops/backup-sim.json"],
                   input=json.dumps(config), text=True, check=True)  # fmt: skip
    start = dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    dates = " ".join((start + dt.timedelta(days=n)).isoformat() for n in range(60))
    run = host.run(
        f"for d in {dates}; do runuser -u postgres -- /usr/local/sbin/pgops-backup "
        "--config /etc/pgops/backup-sim.json run --now $d >/dev/null || exit 1; done"
    )
    assert run.rc == 0, run.stderr
    kept = {k.rsplit("/", 1)[1].removesuffix(".json") for k in bucket_keys(s3, "simulation/logical/manifests/")}
    # The same policy computed here from the calendar alone.
    expected: list[Manifest] = []
    for n in range(60):
        when = start + dt.timedelta(days=n)
        expected.append(Manifest(backup_id(when), when, "k", 1, "0" * 64, tiers_for(when, expected)))
        expected, _ = plan_retention(expected, config["keep"])
    assert kept == {m.id for m in expected}
    assert len(kept) == 12  # 7 daily + 4 weekly + 3 monthly, some shared
    dumps = bucket_keys(s3, "simulation/logical/dumps/")
    assert dumps == {f"simulation/logical/dumps/{i}{suffix}" for i in kept for suffix in (".dump", ".globals.sql")}


def test_logical_restore_equals_the_source(host):
    assert host.run("systemctl start pgops-backup.service").rc == 0
    run = run_playbook(
        "playbooks/restore.yml", {"restore_host": host.backend.host, "restore_cluster": "copy", "restore_port": 5433}
    )
    assert run.returncode == 0, run.stdout[-3000:]
    try:
        assert table_digests(host, 5433) == table_digests(host, 5432)
        owner = host.run("runuser -u postgres -- psql -XAtq -p 5433 -d payments -c %s",
                         "SELECT tableowner FROM pg_tables WHERE tablename = 'merchant'")  # fmt: skip
        assert owner.stdout.strip() == "payments_owner"
    finally:
        host.run(f"pg_dropcluster --stop {major(host)} copy")


def test_restore_refuses_to_overwrite_a_running_primary(host):
    run = run_playbook(
        "playbooks/restore.yml", {"restore_host": host.backend.host, "restore_cluster": "main", "restore_port": 5433}
    )
    assert run.returncode != 0 and "never main" in run.stdout


def test_restore_never_replaces_an_existing_cluster_unasked(host):
    assert host.run(f"pg_createcluster {major(host)} occupied --port 5435").rc == 0
    try:
        run = run_playbook(
            "playbooks/restore.yml",
            {"restore_host": host.backend.host, "restore_cluster": "occupied", "restore_port": 5435},
        )
        assert run.returncode != 0 and "Cluster occupied already exists" in run.stdout
        assert recap_changed(run.stdout).get(host.backend.host, 0) == 0
        assert host.run(f"pg_lsclusters {major(host)} occupied").rc == 0
    finally:
        host.run(f"pg_dropcluster --stop {major(host)} occupied")


def test_full_diff_incr_and_retention(host):
    """Full, differential and incremental backups, taken where Patroni says,
    and expired by count: a new full retires the previous full with the
    backups that depend on it (retention-full 1 here), a new differential the
    previous differential (retention-diff 1)."""
    labels = []
    for kind in ("full", "diff", "incr", "diff"):
        turn = physical_backup(kind)
        assert member_whose_turn() == turn
        labels.append(repo_info(host)["backup"][-1]["label"])
    # The second differential retired the first and the incremental on it.
    backups = repo_info(host)["backup"]
    assert [b["label"] for b in backups] == [labels[0], labels[3]]
    assert backups[1]["type"] == "diff" and backups[1]["reference"] == [labels[0]]
    physical_backup("full")
    backups = repo_info(host)["backup"]
    assert [b["type"] for b in backups] == ["full"] and backups[0]["label"] not in labels
    assert repo_info(host)["cipher"] == "aes-256-cbc"


def test_backups_come_from_a_standby_while_the_primary_works(host, tmp_path):
    """The member whose turn it is is a streaming standby; the backup it takes
    while the payment workload runs on the primary reads the data files there
    (backup-standby), and the primary keeps serving."""
    turn = member_whose_turn()
    assert turn != host.backend.host
    log = member(turn).file("/var/log/pgbackrest/payments-backup.log")
    seen = len(log.content_string) if log.exists else 0
    app = USERS["payments_app"]
    workload = subprocess.Popen(  # 20 s of payments on the leader, as the application
        ["bash", "bench/payment_workload.sh", host.backend.host],
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "DURATION": "20", "CLIENTS": "4", "OUT": str(tmp_path), "LABEL": "during-backup",
             "BENCH_USER": app.name, "BENCH_PASSWORD": app.password},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)
        assert physical_backup("full") == turn
    finally:
        out, _ = workload.communicate(timeout=120)
    assert workload.returncode == 0, out[-2000:]
    assert '"failed": 0' in out
    this_run = log.content_string[seen:]  # the log keeps every run's lines
    assert "backup-standby" in this_run and "wait for replay on the standby" in this_run


def test_the_leader_backs_up_when_no_standby_streams(host):
    """With its only standby down, the turn falls to the leader, which backs
    up its own files (pgBackRest's backup-standby is lifted for that run)."""
    standby = member(next(n for n in NODES if n != host.backend.host))
    assert standby.run("systemctl stop patroni").rc == 0
    try:
        wait_until(lambda: member_whose_turn() == host.backend.host, 60, "the turn falls to the leader")
        assert physical_backup("incr") == host.backend.host
        newest = repo_info(host)["backup"][-1]
        assert newest["type"] == "incr" and not newest["error"]
    finally:
        assert standby.run("systemctl start patroni").rc == 0
        wait_until(lambda: member_whose_turn() == standby.backend.host, 120, "the standby streams again")


def test_point_in_time_recovery(host):
    label = [b for b in repo_info(host)["backup"] if b["type"] == "full"][-1]["label"]  # the standby's full
    psql(host, "CREATE TABLE pitr_marker (id int PRIMARY KEY); INSERT INTO pitr_marker SELECT generate_series(1, 3)")
    time.sleep(1.1)
    target = psql(host, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
    time.sleep(1.1)
    psql(host, "INSERT INTO pitr_marker SELECT generate_series(4, 6)")
    psql(host, "SELECT pg_create_restore_point('pgops-test-six')")
    psql(host, "DROP TABLE pitr_marker")
    physical_backup("incr")  # newer than the restore point: restoring to it takes the full's label
    wait_archived(host)
    try:
        restore_twice(host, target, label)
    finally:
        host.run(f"pg_dropcluster --stop {major(host)} pitr")


def restore_twice(host, target, label):
    """By time into a new copy (pgBackRest picks the full, the newest backup
    before it), then by restore point in place (delta), from the full named by
    its label (the newest backup, an incremental, ended after the point)."""
    for request, expected in (
        ({"restore_target_time": target}, "1,2,3"),
        ({"restore_target_name": "pgops-test-six", "restore_force": True, "restore_backup_id": label}, "1,2,3,4,5,6"),
    ):
        run = run_playbook(
            "playbooks/restore.yml",
            {"restore_host": host.backend.host, "restore_mode": "pitr", "restore_cluster": "pitr",
             "restore_port": 5434, **request},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:]
        rows = host.run("runuser -u postgres -- psql -XAtq -p 5434 -d postgres -c %s",
                        "SELECT string_agg(id::text, ',' ORDER BY id) FROM pitr_marker")  # fmt: skip
        assert rows.rc == 0, rows.stderr
        assert rows.stdout.strip() == expected
        archiving = host.run("runuser -u postgres -- psql -XAtq -p 5434 -c 'SHOW archive_mode'").stdout.strip()
        assert archiving == "off"


def test_s3_outage_fails_clearly_and_deletes_nothing(host, s3):
    before = bucket_keys(s3, "pgops/")
    rule = s3_cut_rule(host, S3_ENDPOINT)
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        run = tool(host, "run")
        assert run.rc != 0
        assert "pgops-backup: run FAILED: S3" in run.stderr
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    after = bucket_keys(s3, "pgops/")
    assert after == before
    again = tool(host, "run")
    assert again.rc == 0, again.stderr


def test_archiving_through_an_s3_outage_fails_loudly_and_catches_up(host, s3):
    """With the leader's path to S3 cut, archive-push fails (pg_stat_archiver
    counts it, pgBackRest says why), WAL waits in pg_wal and the spool holds
    only status files, nothing in the bucket is deleted; once S3 is back the
    archive catches up with no gap, as pgbackrest check proves."""
    before = bucket_keys(s3, "pgops/")
    failed = int(psql(host, "SELECT failed_count FROM pg_stat_archiver"))
    rule = s3_cut_rule(host, S3_ENDPOINT)
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        for _ in range(3):
            psql(host, "CREATE TABLE IF NOT EXISTS outage_marker (id int); INSERT INTO outage_marker VALUES (1)")
            psql(host, "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 120
        while int(psql(host, "SELECT failed_count FROM pg_stat_archiver")) == failed:
            assert time.monotonic() < deadline, "archiving did not report a failure"
            time.sleep(2)
        ready = host.run(f"ls {psql(host, 'SHOW data_directory')}/pg_wal/archive_status").stdout.split()
        assert any(name.endswith(".ready") for name in ready)
        spool = host.run("du -sk /var/spool/pgbackrest").stdout.split()[0]
        assert int(spool) < 1024, f"the spool holds {spool} kB: WAL copies, not status files"
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    psql(host, "DROP TABLE IF EXISTS outage_marker")
    wait_archived(host, timeout=180)
    after = bucket_keys(s3, "pgops/")
    assert before <= after
    check = host.run("runuser -u postgres -- pgbackrest --stanza=payments check")
    assert check.rc == 0, check.stderr + check.stdout


def test_restore_drill_passes_then_fails_on_a_corrupted_dump(host, s3):
    good = run_playbook("playbooks/restore_drill.yml", {"restore_drill_host": host.backend.host})
    assert good.returncode == 0, good.stdout[-3000:]
    assert "Restore drill passed" in good.stdout
    ident = latest_manifest(host)
    key = f"{PREFIX}{ident}.dump"
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(corrupted))
    verify = tool(host, "verify", ident)
    assert verify.rc != 0 and "is corrupt" in verify.stderr
    bad = run_playbook("playbooks/restore_drill.yml", {"restore_drill_host": host.backend.host})
    assert bad.returncode != 0 and "is corrupt" in bad.stdout
    s3.put_object(Bucket=BUCKET, Key=key, Body=original)
    # One object of the newest physical backup, changed in the bucket: a
    # bundle (backup_repo_bundle), which holds many of the cluster's small
    # files. verify finds the bad file in it (its report; 2.45 exits 0) and
    # the drill fails on it.
    label = repo_info(host)["backup"][-1]["label"]
    prefix = f"pgops/payments/pgbackrest/backup/payments/{label}/bundle/"
    bundles = sorted(bucket_keys(s3, prefix))
    assert bundles, f"backup {label} has no bundle: backup_repo_bundle is not in effect"
    repo_key = bundles[0]
    repo_original = s3.get_object(Bucket=BUCKET, Key=repo_key)["Body"].read()
    damaged = bytearray(repo_original)
    damaged[len(damaged) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=repo_key, Body=bytes(damaged))
    try:
        broken = run_playbook("playbooks/restore_drill.yml", {"restore_drill_host": host.backend.host})
        assert broken.returncode != 0
        failed_at = f"Restore drill FAILED on {host.backend.host} (Verify every backup and archived segment against"
        assert failed_at in " ".join(broken.stdout.split()), broken.stdout[-3000:]
    finally:
        s3.put_object(Bucket=BUCKET, Key=repo_key, Body=repo_original)
    # Each outcome has its own metric file (node exporter): the failure did
    # not erase the last success.
    recorded = {
        outcome: host.file(f"/var/lib/prometheus/node-exporter/pgops-restore-drill-{outcome}.prom").content_string
        for outcome in ("success", "failure")
    }
    assert "pgops_restore_drill_last_success_timestamp_seconds " in recorded["success"]
    assert "pgops_restore_drill_last_failure_timestamp_seconds " in recorded["failure"]
    assert host.run("pg_lsclusters -h").stdout.count("drill") == 0  # the scratch cluster is gone either way


def test_the_backup_play_in_check_mode_changes_nothing(host):
    """After the backups, restores, outages and drills above, the backup play
    in check mode runs cleanly and would change nothing: the repository, its
    stanza, the timers and the archive settings are as the role left them
    (the cluster scenario re-runs all of site.yml for real)."""
    run = run_playbook("playbooks/backup.yml", check=True)
    assert run.returncode == 0, run.stdout[-3000:]
    changed = recap_changed(run.stdout)
    assert set(NODES) <= set(changed) and max(changed.values()) == 0, run.stdout[-5000:]

"""The operations as AWX runs them: each job template of roles/awx launched
through ansible-runner's Python API (pgops.runner), with its survey applied
the way AWX applies it, against the scenario's server and S3 endpoint. Every
test asserts the job's status and its effect. The tests run in file order
(each takes the `host` fixture) after the security suites."""

import json
import os
import re
from pathlib import Path

import pytest
from conftest import bucket_keys, physical_backup, repo_info

from pgops import runner
from pgops.testing import plant_default_partition_row, psql, remove_default_partition_rows

BUCKET = "pgops-molecule-backups"


def launch(name, answers=None, check=False):
    return runner.launch_template(name, Path(os.environ["MOLECULE_INVENTORY_FILE"]), answers, check, job_timeout=900)


def refund_partitions(host):
    return psql(host, "SELECT partition_tablename FROM partman.show_partitions('payments.refund')", "payments").split()


def test_partition_maintenance_premakes_missing_partitions_with_the_parents_grants(host):
    newest = refund_partitions(host)[-2:]
    # Refund partitions are protected: dropping them takes a permit (docs/schema.md).
    psql(
        host,
        "SELECT pgops.permit_protected_ddl('test: drop two future partitions for maintenance to premake'); "
        f"DROP TABLE payments.{newest[0]}, payments.{newest[1]}",
        "payments",
    )
    checked = launch("Partition maintenance", check=True)
    assert checked.status == "successful" and max(checked.changed().values(), default=0) == 0, checked.stdout[-3000:]
    assert newest[1] not in refund_partitions(host)
    job = launch("Partition maintenance")
    assert job.status == "successful", job.stdout[-3000:]
    assert max(job.changed().values()) == 1
    assert refund_partitions(host)[-2:] == newest
    # Owner and grants of the parent (reads only: refunds are append-only),
    # not postgres' default privileges.
    acl = (
        "SELECT relowner::regrole, array(SELECT unnest(relacl)::text ORDER BY 1) FROM pg_class WHERE oid = %s::regclass"
    )
    parent = psql(host, acl % "'payments.refund'", "payments")
    assert psql(host, acl % f"'payments.{newest[1]}'", "payments") == parent
    assert max(launch("Partition maintenance").changed().values()) == 0


def test_partition_maintenance_fails_on_rows_in_a_default_partition(host):
    """A payment dated beyond the premade partitions lands in the default one."""
    plant_default_partition_row(host, "ops_probe")
    try:
        job = launch("Partition maintenance")
        assert job.status == "failed"
        assert "Rows in the default partition of payments.transaction" in job.stdout
    finally:
        remove_default_partition_rows(host)


def test_status_names_the_leader(host):
    job = launch("Status")
    assert job.status == "successful", job.stdout[-3000:]
    assert re.search(rf"""["']?leader["']?: ["']?{host.backend.host}\b""", job.stdout), job.stdout[-3000:]


def test_backup_now_uploads_a_dump_and_a_physical_backup(host, s3):
    """Backup now, logical then incremental, on the full and differential the
    timers take (the backup scenario proves each kind and its retention; here
    they feed the drill, the monitoring suite and the failover trial)."""
    for kind in ("full", "diff"):
        physical_backup(kind)
    before_dumps = bucket_keys(s3, "pgops/payments/logical/manifests/")
    job = launch("Backup now", {"backup_now_kind": "logical"})
    assert job.status == "successful", job.stdout[-3000:]
    status = json.loads(host.file("/var/lib/pgops/backup/last_success.json").content_string)
    assert bucket_keys(s3, "pgops/payments/logical/manifests/") - before_dumps == {
        f"pgops/payments/logical/manifests/{status['id']}.json"
    }
    assert f"last good logical backup {status['id']}" in job.stdout
    before = [b["label"] for b in repo_info(host)["backup"]]
    job = launch("Backup now", {"backup_now_kind": "incr"})
    assert job.status == "successful", job.stdout[-3000:]
    after = repo_info(host)["backup"]
    assert after[-1]["label"] not in before and after[-1]["type"] == "incr"


def test_backup_now_refuses_an_unknown_kind_before_anything_runs(host):
    with pytest.raises(runner.LaunchError, match="not one of"):
        launch("Backup now", {"backup_now_kind": "incremental"})
    job = runner.run("playbooks/backup_now.yml", Path(os.environ["MOLECULE_INVENTORY_FILE"]), {"backup_now_kind": "x"})
    assert job.status == "failed" and "backup_now_kind must be one of: logical, full, diff, incr" in job.stdout
    assert max(job.changed().values(), default=0) == 0


def test_restore_drill_with_the_default_host(host):
    job = launch("Restore drill")
    assert job.status == "successful", job.stdout[-3000:]
    assert "Restore drill passed" in job.stdout
    # The default drill host: the inventory's last member (a standby here).
    last = host.get_host("ansible://cluster3", ansible_inventory=host.backend.ansible_inventory)
    assert "drill" not in last.run("pg_lsclusters -h").stdout


def test_leader_only_operations_refuse_when_the_leader_is_left_out(host):
    """--limit without the member that should act: refused, not a silent
    success that did nothing."""
    standby = next(n for n in ("cluster1", "cluster2", "cluster3") if n != host.backend.host)
    job = runner.run("playbooks/backup_now.yml", Path(os.environ["MOLECULE_INVENTORY_FILE"]), limit=standby)
    assert job.status == "failed"
    assert f"The leader, {host.backend.host}, is not in the play" in job.stdout and "no backup was taken" in job.stdout
    # A physical backup is a standby's to take: --limit to the leader alone.
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    job = runner.run("playbooks/backup_now.yml", inventory, {"backup_now_kind": "incr"}, limit=host.backend.host)
    assert job.status == "failed"
    assert "backup, and it is not in the play (--limit, or unreachable): no backup was taken" in " ".join(
        job.stdout.split()
    )
    assert max(job.changed().values(), default=0) == 0


def test_restore_drill_never_touches_the_servers_own_cluster(host):
    """The drill drops its scratch cluster whatever happens: naming the
    server's own cluster (or redirecting the restore) is refused first."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    for extra in ({"restore_drill_cluster": "main"}, {"restore_cluster": "elsewhere"}):
        job = runner.run("playbooks/restore_drill.yml", inventory, {"restore_drill_host": host.backend.host, **extra})
        assert job.status == "failed" and "needs its own scratch cluster" in job.stdout, extra
        assert max(job.changed().values(), default=0) == 0
    assert psql(host, "SELECT NOT pg_is_in_recovery()") == "t"


def test_security_audit_is_clean(host):
    job = launch("Security audit")
    assert job.status == "successful", job.stdout[-3000:]
    strict = launch("Security audit", {"security_audit_fail_on": "info"})
    assert strict.status == "failed"  # info findings exist, so the threshold is applied

"""roles/job/files/pgops-job-metric: what a job's run leaves for the node
exporter's textfile collector, as systemd's ExecStopPost would call it."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "roles/job/files/pgops-job-metric"
LABELS = 'kind="logical",cluster="payments"'


def record(directory: Path, result: str, status: str, max_age: int = 93600) -> subprocess.CompletedProcess:
    env = {**os.environ, "SERVICE_RESULT": result, "EXIT_STATUS": status}
    args = [str(directory), "pgops-backup", "pgops_backup", LABELS, str(max_age)]
    return subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False)


def test_a_success_and_then_a_failure_keep_both_times(tmp_path):
    assert record(tmp_path, "success", "0").returncode == 0
    assert record(tmp_path, "exit-code", "1").returncode == 0
    success = (tmp_path / "pgops-job-pgops-backup-success.prom").read_text()
    failure = (tmp_path / "pgops-job-pgops-backup-failure.prom").read_text()
    max_age = (tmp_path / "pgops-job-pgops-backup-max-age.prom").read_text()
    assert f"pgops_backup_last_success_timestamp_seconds{{{LABELS}}} " in success
    assert f"pgops_backup_last_failure_timestamp_seconds{{{LABELS}}} " in failure
    # One series per name across the files (the collector refuses duplicates).
    assert max_age.splitlines()[-1] == f"pgops_backup_max_age_seconds{{{LABELS}}} 93600"
    assert "max_age" not in success + failure
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left behind
        "pgops-job-pgops-backup-failure.prom",
        "pgops-job-pgops-backup-max-age.prom",
        "pgops-job-pgops-backup-success.prom",
    ]
    assert oct(os.stat(tmp_path / "pgops-job-pgops-backup-success.prom").st_mode & 0o777) == "0o644"


def test_not_this_hosts_turn_records_no_outcome(tmp_path):
    assert record(tmp_path, "success", "75").returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["pgops-job-pgops-backup-max-age.prom"]


def test_no_textfile_directory_is_not_an_error(tmp_path):
    assert record(tmp_path / "absent", "success", "0").returncode == 0


def test_no_max_age_writes_none_and_removes_an_old_one(tmp_path):
    record(tmp_path, "success", "0")
    record(tmp_path, "success", "0", max_age=0)
    assert [p.name for p in tmp_path.iterdir()] == ["pgops-job-pgops-backup-success.prom"]

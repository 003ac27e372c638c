"""playbooks/security_audit.yml: clean on a fresh deploy, and flags a planted
grant to PUBLIC and a failed login, failing the run by severity."""

import json

import psycopg
import pytest

from pgops.testing import LoginRole, connect, fetch_ca, host_address, psql, run_playbook

testinfra_hosts = ["ansible://molecule-schema1"]


def test_fresh_deploy_is_clean(fresh_security_report):
    run, report = fresh_security_report
    assert run.returncode == 0, run.stdout[-3000:]
    assert report is not None
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    # The informational part is there: superuser sessions on the socket (Ansible's), no backup status yet.
    assert {f["check"] for f in report["findings"]} >= {"superuser_session", "backup"}


def test_planted_grant_and_failed_login_are_flagged(host, tmp_path):
    ca = fetch_ca(host, tmp_path)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(host_address(host), LoginRole("m_reader", "not-the-password"), ca, dbname="payments")
    psql(host, "GRANT SELECT ON payments.merchant TO PUBLIC", db="payments")
    try:
        report_file = tmp_path / "report.json"
        run = run_playbook("playbooks/security_audit.yml", {"security_audit_report_file": str(report_file)})
    finally:
        psql(host, "REVOKE SELECT ON payments.merchant FROM PUBLIC", db="payments")
    assert run.returncode != 0
    assert "finding(s) at or above high: public_grant payments:table:payments.merchant" in run.stdout
    findings = {(f["check"], f["subject"]): f for f in json.loads(report_file.read_text())["findings"]}
    assert findings[("public_grant", "payments:table:payments.merchant")]["severity"] == "high"
    failed = [f for (check, who), f in findings.items() if check == "failed_login" and who.startswith("m_reader@")]
    assert failed and failed[0]["detail"].endswith("failed login(s)")

    # Revoked: the next report no longer lists it.
    again = run_playbook("playbooks/security_audit.yml", {"security_audit_report_file": str(report_file)})
    assert "public_grant" not in {f["check"] for f in json.loads(report_file.read_text())["findings"]}, again.stdout

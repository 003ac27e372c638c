"""playbooks/security_audit.yml: clean on a fresh deploy, and flags a planted
grant to PUBLIC and a failed login, failing the run by severity."""

import json

import psycopg
import pytest

from pgops.testing import LoginRole, connect, fetch_ca, host_address, psql, run_playbook


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


# Function DDL in the payments schema needs a permit (V0019): the plants
# that create or drop one take it, in the same transaction.
PERMIT = "SELECT pgops.permit_protected_ddl('security report test: plant and remove');"

# One plant per class of least-privilege defect, and its removal.
PLANTS = {
    ("definer_search_path", "payments:public.sr_unpinned()"): (
        "CREATE FUNCTION public.sr_unpinned() RETURNS int SECURITY DEFINER LANGUAGE sql AS 'SELECT 1';"
        "REVOKE ALL ON FUNCTION public.sr_unpinned() FROM PUBLIC",
        "DROP FUNCTION public.sr_unpinned()",
    ),
    ("privileged_calls_foreign_code", "payments:public.sr_privileged()"): (
        PERMIT + "CREATE FUNCTION payments.sr_helper() RETURNS int LANGUAGE sql AS 'SELECT 1';"
        "ALTER FUNCTION payments.sr_helper() OWNER TO developer;"
        "CREATE FUNCTION public.sr_privileged() RETURNS int SECURITY DEFINER SET search_path = pg_catalog "
        "LANGUAGE sql AS 'SELECT payments.sr_helper()'; REVOKE ALL ON FUNCTION public.sr_privileged() FROM PUBLIC",
        PERMIT + "DROP FUNCTION public.sr_privileged(); DROP FUNCTION payments.sr_helper()",
    ),
    ("disabled_trigger", "payments.merchant.sr_noop"): (
        PERMIT + "CREATE FUNCTION payments.sr_noop() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, "
        "pg_temp AS 'BEGIN RETURN NEW; END';"
        "CREATE TRIGGER sr_noop BEFORE UPDATE ON payments.merchant FOR EACH ROW EXECUTE FUNCTION payments.sr_noop();"
        "ALTER TABLE payments.merchant DISABLE TRIGGER sr_noop",
        PERMIT + "DROP TRIGGER sr_noop ON payments.merchant; DROP FUNCTION payments.sr_noop()",
    ),
    ("owner_member", "m_plain"): ("GRANT payments_owner TO m_plain", "REVOKE payments_owner FROM m_plain"),
    ("protected_dml", "payments.transaction"): (
        "GRANT INSERT ON payments.transaction TO developer",
        "REVOKE INSERT ON payments.transaction FROM developer",
    ),
    ("protected_dml", "payments.customer_payment_method.token"): (
        "GRANT UPDATE (token) ON payments.customer_payment_method TO payments_app",
        "REVOKE UPDATE (token) ON payments.customer_payment_method FROM payments_app",
    ),
    # The second ring: code planted where a privileged session looks, a
    # trigger function that resolves names in its caller's path, a login
    # that can take every slot, a reader with temporary space, a role that
    # can end the WAL senders.
    ("schema_squatted", "payments:postgres"): ("CREATE SCHEMA postgres AUTHORIZATION admin", "DROP SCHEMA postgres"),
    ("pinned_search_path", "postgres"): (
        "ALTER ROLE postgres RESET search_path",
        "ALTER ROLE postgres SET search_path = public, pg_temp",
    ),
    ("trigger_search_path", "payments:public.sr_trigger()"): (
        "CREATE FUNCTION public.sr_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
        "REVOKE ALL ON FUNCTION public.sr_trigger() FROM PUBLIC",
        "DROP FUNCTION public.sr_trigger()",
    ),
    ("connection_limit", "m_plain"): (
        "ALTER ROLE m_plain CONNECTION LIMIT -1",
        "ALTER ROLE m_plain CONNECTION LIMIT 2",
    ),
    ("database_privilege", "payments:readonlyuser TEMPORARY"): (
        "GRANT TEMPORARY ON DATABASE payments TO readonlyuser",
        "REVOKE TEMPORARY ON DATABASE payments FROM readonlyuser",
    ),
    ("database_privilege", "payments:admin CREATE"): (
        "GRANT CREATE ON DATABASE payments TO admin",
        "REVOKE CREATE ON DATABASE payments FROM admin",
    ),
    ("signal_backend", "admin"): ("GRANT pg_signal_backend TO admin", "REVOKE pg_signal_backend FROM admin"),
    ("definer_public_execute", "payments:payments.capture(bigint,timestamp with time zone,text,text)"): (
        "GRANT EXECUTE ON FUNCTION payments.capture(bigint, timestamptz, text, text) TO PUBLIC",
        "REVOKE EXECUTE ON FUNCTION payments.capture(bigint, timestamptz, text, text) FROM PUBLIC",
    ),
}


def test_each_least_privilege_defect_is_flagged(host, tmp_path):
    for plant, _ in PLANTS.values():
        psql(host, plant, db="payments")
    try:
        report_file = tmp_path / "report.json"
        run = run_playbook("playbooks/security_audit.yml", {"security_audit_report_file": str(report_file)})
    finally:
        for _, remove in PLANTS.values():
            psql(host, remove, db="payments")
    assert run.returncode != 0
    findings = {(f["check"], f["subject"]): f["severity"] for f in json.loads(report_file.read_text())["findings"]}
    missing = [key for key in PLANTS if key not in findings]
    assert missing == [], sorted(findings)
    assert {findings[key] for key in PLANTS if key[0] != "connection_limit"} <= {"high", "critical"}
    assert findings[("connection_limit", "m_plain")] == "medium"
    assert findings[("owner_member", "m_plain")] == "critical"
    assert findings[("schema_squatted", "payments:postgres")] == "critical"

    clean = run_playbook("playbooks/security_audit.yml", {"security_audit_report_file": str(report_file)})
    assert clean.returncode == 0, clean.stdout[-3000:]

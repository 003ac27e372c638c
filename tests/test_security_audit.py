"""The security audit module's rules: log parsing, pg_hba, PUBLIC grants and
privileged roles (the catalog queries run against real servers in the
Molecule `schema` scenario)."""

import datetime as dt
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "pgops_security_audit",
    Path(__file__).resolve().parent.parent / "roles/security_audit/library/pgops_security_audit.py",
)
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)

SINCE = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)
EVENTS = [  # (second past 10:00, pid, user, client, message); -1 is before the window
    (-1, 1, "eve", "10.0.0.9", 'FATAL:  password authentication failed for user "eve"'),
    (1, 2, "eve", "10.0.0.9", 'FATAL:  password authentication failed for user "eve"'),
    (2, 2, "eve", "10.0.0.9", 'DETAIL:  Connection matched pg_hba.conf line 12: "hostssl all all 10.0.0.0/8 scram"'),
    (3, 3, "bob", "10.0.0.7", 'FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "bob", database "payments"'),
    (4, 4, "postgres", "[local]", "LOG:  connection authorized: user=postgres database=payments"),
    (5, 5, "postgres", "10.0.0.8", "LOG:  connection authorized: user=postgres database=payments SSL enabled"),
    (6, 6, "ann", "10.0.0.6", "LOG:  connection authorized: user=ann database=payments SSL enabled"),
]
LINES = [
    f"{(SINCE + dt.timedelta(seconds=s)):%Y-%m-%d %H:%M:%S}.000 UTC [{pid}] client={client} user={user},db=payments,"
    f"app=psql {message}"
    for s, pid, user, client, message in EVENTS
] + [
    "\tcontinuation line of a multi-line statement",
]


def by_subject(findings):
    return {(f["check"], f["subject"]): f for f in findings}


def test_log_scan_counts_failures_and_privileged_sessions_since_the_window():
    findings, read = audit.scan_log_lines(LINES, SINCE, {"postgres"}, {"ann"}, threshold=2)
    got = by_subject(findings)
    assert read == 6  # the line before the window and the continuation are skipped
    assert got[("failed_login", "eve@10.0.0.9")]["detail"] == "1 failed login(s)"
    assert got[("failed_login", "eve@10.0.0.9")]["severity"] == "low"
    assert got[("failed_login", "bob@10.0.0.7")]["severity"] == "low"
    assert got[("superuser_session", "postgres@[local]")]["severity"] == "info"
    assert got[("superuser_session", "postgres@10.0.0.8")]["severity"] == "high"
    assert got[("admin_session", "ann@10.0.0.6")]["severity"] == "info"


def test_failed_logins_at_the_threshold_are_high():
    findings, _ = audit.scan_log_lines(LINES[:2] * 3, SINCE, set(), set(), threshold=3)
    assert by_subject(findings)[("failed_login", "eve@10.0.0.9")]["severity"] == "high"


def rule(n, kind, method, db="all", user="all", address=None, error=None):
    return {"line_number": n, "type": kind, "auth_method": method, "database": [db], "user_name": [user],
            "address": address, "error": error}  # fmt: skip


def test_hba_rules():
    findings = audit.check_hba(
        [
            rule(1, "local", "peer", user="postgres"),
            rule(2, "hostssl", "reject", user="postgres", address="192.0.2.0"),
            rule(3, "hostssl", "scram-sha-256", address="10.0.0.0"),
            rule(4, "host", "scram-sha-256", address="10.0.0.0"),
            rule(5, "hostssl", "trust", address="10.0.0.0"),
            rule(6, "hostssl", "md5", address="10.0.0.0"),
            rule(7, "host", "reject", address="192.0.2.0"),
        ]
    )
    assert [(f["subject"], f["severity"]) for f in findings] == [
        ("line 4", "high"),
        ("line 5", "critical"),
        ("line 6", "high"),
    ]


def test_public_grants_outside_the_allow_list():
    grants = [
        {"database": "postgres", "kind": "schema", "object": "public", "privileges": "USAGE"},
        {"database": "payments", "kind": "table", "object": "payments.merchant", "privileges": "SELECT"},
        {"database": "payments", "kind": "function", "object": "pgops.f()", "privileges": "EXECUTE"},
        {"database": "template1", "kind": "database", "object": "template1", "privileges": "CONNECT"},
    ]
    findings = audit.check_public(grants, ["postgres:schema:public", "template1:*"])
    assert [(f["subject"], f["severity"]) for f in findings] == [
        ("payments:table:payments.merchant", "high"),
        ("payments:function:pgops.f()", "medium"),
    ]


def test_privileged_roles():
    base = {"rolsuper": False, "rolcreaterole": False, "rolbypassrls": False, "rolreplication": False}
    roles = [
        dict(base, rolname="postgres", rolsuper=True),
        dict(base, rolname="mallory", rolsuper=True),
        dict(base, rolname="ops", rolcreaterole=True, rolbypassrls=True),
        dict(base, rolname="app"),
    ]
    findings = audit.check_privileged(roles, {"postgres"})
    assert [(f["subject"], f["detail"], f["severity"]) for f in findings] == [
        ("mallory", "superuser", "high"),
        ("ops", "createrole", "medium"),
        ("ops", "bypassrls", "medium"),
    ]


def test_backup_age(tmp_path):
    now = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
    findings, age = audit.backup_age(str(tmp_path / "missing.json"), 26, now)
    assert age is None and findings[0]["severity"] == "info"
    status = tmp_path / "last.json"
    status.write_text('{"finished_at": "2026-11-23T00:00:00+00:00"}')
    findings, age = audit.backup_age(str(status), 26, now)
    assert age == 36.0 and findings[0]["severity"] == "high"
    findings, _ = audit.backup_age(str(status), 48, now)
    assert findings[0]["severity"] == "info"


def fn(signature, owner, body="", secdef=False, config=None, schema="payments", public_execute=False, trigger=False):
    return {"signature": signature, "name": signature.split("(")[0].split(".")[-1], "schema": schema, "owner": owner,
            "secdef": secdef, "config": config, "body": body, "public_execute": public_execute,
            "trigger": trigger}  # fmt: skip


def test_calls_are_read_outside_string_literals():
    body = "SELECT payments.pii_key(1), coalesce(x, 0) FROM t; EXECUTE format('SELECT evil(%s)', 1);"
    assert audit.called_names(body) == {("payments", "pii_key"), (None, "coalesce"), (None, "format")}


def test_privileged_code_calling_replaceable_invoker_code_is_critical():
    helper = fn("payments.helper()", "payments_owner")
    definer_helper = fn("payments.safe()", "payments_owner", secdef=True, config=["search_path=pg_catalog"])
    own = fn("payments.pii_key(integer)", "pii_keyholder")
    procs = [helper, definer_helper, own]
    functions = [
        fn(
            "payments.pii_encrypt(text)",
            "pii_keyholder",
            "SELECT payments.helper(); SELECT pii_key(1)",
            True,
            ["search_path=pg_catalog, payments"],
        ),  # fmt: skip
        fn("public.super()", "postgres", "PERFORM payments.safe(); PERFORM helper()", True, ["search_path=pg_catalog"]),
        fn("payments.app()", "payments_owner", "PERFORM payments.helper()", True, ["search_path=pg_catalog"]),
    ]
    found = audit.check_privileged_calls(functions, procs, {"postgres"}, {"pii_keyholder"})
    # pii_encrypt calls the owner's invoker helper (critical) and its own key function (fine); the superuser's
    # function calls a definer (fine) and an unqualified helper outside its pinned path (fine); the owner's own
    # code is not privileged.
    assert [(f["severity"], f["subject"], f["detail"]) for f in found] == [
        ("critical", "payments.pii_encrypt(text)",
         "runs as pii_keyholder and calls payments.helper(), owned by payments_owner"),
    ]  # fmt: skip


def test_definers_need_a_pinned_search_path_and_no_public_execute():
    functions = [
        fn("a()", "x", secdef=True, config=None, public_execute=True),
        fn("b()", "x", secdef=True, config=["search_path=pg_catalog, pg_temp"]),
        fn("c()", "x", secdef=False, config=None, public_execute=True),
    ]
    assert [f["subject"] for f in audit.check_definer_search_path(functions)] == ["a()"]
    assert [f["subject"] for f in audit.check_public_definers(functions)] == ["a()"]
    assert audit.pinned_search_path(["work_mem=1MB", 'search_path="$user", public']) == ["$user", "public"]


def test_trigger_functions_and_paths_that_a_caller_can_reach_are_not_pinned():
    """A trigger function runs in the session whose statement fires it; a
    path with "$user", or without pg_temp last, is not pinned."""
    functions = [
        fn("t()", "x", secdef=False, config=None, trigger=True),
        fn("u()", "x", secdef=True, config=['search_path="$user", pg_catalog, pg_temp']),
        fn("v()", "x", secdef=True, config=["search_path=pg_catalog, public"]),
        fn("w()", "x", secdef=False, config=["search_path=pg_catalog, pg_temp"], trigger=True),
    ]
    found = [(f["check"], f["subject"]) for f in audit.check_definer_search_path(functions)]
    assert found == [("trigger_search_path", "t()"), ("definer_search_path", "u()"), ("definer_search_path", "v()")]


def test_schemas_database_privileges_and_logins():
    schemas = [
        {"database": "payments", "name": "postgres", "owner": "admin", "owner_privileged": False},
        {"database": "payments", "name": "adm_x", "owner": "admin", "owner_privileged": False},
        {"database": "payments", "name": "payments", "owner": "payments_owner", "owner_privileged": True},
    ]
    assert [(f["severity"], f["check"], f["subject"]) for f in audit.check_schemas(schemas, {"postgres"})] == [
        ("critical", "schema_squatted", "payments:postgres"),
        ("high", "schema_owner", "payments:adm_x"),
    ]
    acl = [
        {"database": "payments", "grantee": "readonlyuser", "owner": "postgres", "privilege": "TEMPORARY"},
        {"database": "payments", "grantee": "readonlyuser", "owner": "postgres", "privilege": "CONNECT"},
        {"database": "payments", "grantee": "postgres", "owner": "postgres", "privilege": "CREATE"},
    ]
    found = audit.check_database_privileges(acl, {"superusers": {"postgres"}})
    assert [f["subject"] for f in found] == ["payments:readonlyuser TEMPORARY"]
    role = {"rolsuper": False, "rolreplication": False, "rolcanlogin": True, "rolconnlimit": 5,
            "signal_backend": False, "search_path": None}  # fmt: skip
    roles = [
        {**role, "rolname": "ok"},
        {**role, "rolname": "unlimited", "rolconnlimit": -1},
        {**role, "rolname": "replicator", "rolconnlimit": -1, "rolreplication": True},
        {**role, "rolname": "signaller", "signal_backend": True},
        {**role, "rolname": "postgres", "rolsuper": True, "search_path": "pg_catalog, public, pg_temp"},
        {**role, "rolname": "payments_owner", "rolcanlogin": False, "search_path": '"$user", public'},
    ]
    assert [(f["check"], f["subject"]) for f in audit.check_logins(roles, {"payments_owner"})] == [
        ("connection_limit", "unlimited"),
        ("signal_backend", "signaller"),
        ("pinned_search_path", "payments_owner"),
    ]


def test_writes_on_protected_tables_are_high_unless_allowed():
    grants = [
        {"object": "payments.transaction", "grantee": "developer", "privilege": "INSERT"},
        {"object": "payments.customer.password_hash", "grantee": "pgaudit_auditor", "privilege": "UPDATE"},
    ]
    found = audit.check_protected_dml(grants, {"payments_owner", "pgaudit_auditor"})
    assert [(f["severity"], f["subject"], f["detail"]) for f in found] == [
        ("high", "payments.transaction", "developer may INSERT")
    ]


def archiver(failing, mode="on"):
    return {"archive_mode": mode, "failing": failing, "archived_count": 10, "failed_count": 3,
            "last_archived_wal": "000000010000000000000009", "last_failed_wal": "00000001000000000000000A",
            "last_archived_time": SINCE, "last_failed_time": SINCE + dt.timedelta(minutes=1)}  # fmt: skip


def test_failing_or_disabled_archiving_is_high():
    assert audit.check_archiver(archiver(failing=True))[0]["severity"] == "high"
    assert "failing" in audit.check_archiver(archiver(failing=True))[0]["detail"]
    assert audit.check_archiver(archiver(failing=False, mode="off"))[0]["severity"] == "high"
    ok = audit.check_archiver(archiver(failing=False))[0]
    assert ok["severity"] == "info" and ok["subject"] == "000000010000000000000009"


def test_repository_backups_older_than_allowed_are_high():
    now = SINCE
    summary = {
        "stanza": "payments", "backups": 2, "repository_bytes": 3 * 1048576,
        "archive_min": "a", "archive_max": "b",
        "last": {"full": {"label": "F", "stopped_at": (now - dt.timedelta(hours=200)).timestamp()},
                 "diff": {"label": "D", "stopped_at": (now - dt.timedelta(hours=2)).timestamp()}},
    }  # fmt: skip
    found = by_subject(audit.check_repository(summary, {"full": 170, "diff": 50, "incr": 26}, now))
    assert found[("repository", "full")]["severity"] == "high"
    assert found[("repository", "diff")]["severity"] == "info"
    assert found[("repository", "incr")]["severity"] == "info"  # none yet, as on a new cluster
    assert "yet" in found[("repository", "incr")]["detail"]
    assert "3.0 MB" in found[("repository", "payments")]["detail"]

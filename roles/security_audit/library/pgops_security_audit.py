#!/usr/bin/python
"""Read-only security audit of one PostgreSQL server and its logs (pgops)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pgops_security_audit
short_description: Security findings of one PostgreSQL server, from its catalogs and its logs
description:
  - Read-only. Connects over the local socket as the user the module runs as (postgres).
  - "Checks: privileged roles, grants to PUBLIC, pg_hba rules, TLS, password storage, failed logins per
    user and source, superuser and admin sessions, the age of the last good backup; functions (definer and
    trigger) and privileged roles with a search_path that is not pinned, schemas owned or squatted by
    unprivileged roles, CREATE or TEMPORARY on the database, logins without a connection limit, members of
    pg_signal_backend."
  - Log lines are read from the files in I(log_directory) and parsed with the prefix
    '%m [%p] client=%h user=%u,db=%d,app=%a ' (the audit role's default).
options:
  login_unix_socket: {type: str, required: true, description: "Socket directory (the postgresql role's facts)."}
  login_port: {type: int, default: 5432, description: Port.}
  log_directory: {type: path, required: true, description: Directory of the server's log files.}
  since: {type: str, default: "", description: Only log lines from this time (ISO 8601); empty is window_hours ago.}
  window_hours: {type: int, default: 24, description: How far back the logs are read when since is empty.}
  failed_login_threshold: {type: int, default: 5, description: Failed logins per user and source that are high.}
  allowed_privileged: {type: list, elements: str, default: [postgres], description: Roles allowed special attributes.}
  admin_roles: {type: list, elements: str, default: [admin], description: Members of these have admin sessions.}
  public_allowed:
    type: list
    elements: str
    default: []
    description: "Grants to PUBLIC that are expected, as database:kind:object glob patterns."
  backup_status_file: {type: path, description: JSON file with finished_at of the last good backup.}
  backup_max_age_hours: {type: int, default: 26, description: Older than this is high.}
  repository_summary_command:
    type: list
    elements: str
    default: []
    description: Command printing the backup repository in brief as JSON (pgops-pgbackrest summary); empty skips it.
  repository_max_age_hours:
    type: dict
    default: {}
    description: Hours after which the last backup of each kind (full, diff, incr) is high.
  cert_warn_days: {type: int, default: 30, description: Server certificate expiring sooner is high.}
  host: {type: str, default: "", description: Name given to every finding (the inventory name).}
  database: {type: str, default: payments, description: Database of the protected tables.}
  owner_roles: {type: list, elements: str, default: [payments_owner], description: Roles no login may be a member of.}
  key_roles: {type: list, elements: str, default: [], description: Key owners; like owners, and privileged code.}
  protected_tables:
    type: list
    elements: str
    default: []
    description: Tables (schema.table) and their partitions that only dml_allowed_roles may write.
  protected_columns:
    type: list
    elements: str
    default: []
    description: Columns (schema.table.column) that only dml_allowed_roles may write.
  dml_allowed_roles: {type: list, elements: str, default: [], description: Roles that may write protected tables.}
  trigger_schemas:
    type: list
    elements: str
    default: [payments]
    description: Schemas whose triggers must be enabled.
"""

RETURN = r"""
findings: {description: "[{severity, check, subject, detail}]", type: list, returned: always}
summary: {description: Counts and facts for the report, type: dict, returned: always}
"""

import datetime as dt
import fnmatch
import json
import os
import re
from collections import Counter

from ansible.module_utils.basic import AnsibleModule

SEVERITIES = ["info", "low", "medium", "high", "critical"]
SCRAM = "scram-sha-256"
PREFIX_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<tz>\S+) \[(?P<pid>\d+)\] "
    r"client=(?P<client>\S*) user=(?P<user>[^,]*),db=(?P<db>[^,]*),app=(?P<app>.*?) "
    r"(?P<level>LOG|FATAL|PANIC|ERROR|WARNING|NOTICE|INFO|DEBUG[1-5]?|STATEMENT|DETAIL|HINT|CONTEXT):  (?P<msg>.*)$"
)
FAILED_RES = [
    re.compile(r'password authentication failed for user "(?P<user>[^"]*)"'),
    re.compile(r'no pg_hba\.conf entry for host "(?P<client>[^"]*)", user "(?P<user>[^"]*)"'),
    re.compile(r'pg_hba\.conf rejects connection for host "(?P<client>[^"]*)", user "(?P<user>[^"]*)"'),
]
AUTHORIZED_RE = re.compile(r"connection authorized: user=(?P<user>\S+)")


def finding(severity, check, subject, detail):
    return {
        "severity": severity,
        "rank": SEVERITIES.index(severity),
        "check": check,
        "subject": subject,
        "detail": detail,
    }


def parse_line(line):
    """The prefix fields and message of one log line, or None for continuation lines."""
    m = PREFIX_RE.match(line.rstrip("\n"))
    if not m:
        return None
    rec = m.groupdict()
    rec["time"] = dt.datetime.fromisoformat(rec["ts"]).replace(tzinfo=dt.UTC)
    rec["client"] = re.sub(r"\(\d+\)$", "", rec["client"])  # %h never has a port, %r does
    return rec


def scan_log_lines(lines, since, superusers, admins, threshold):
    """Failed logins per (user, client), superuser and admin sessions per (user, client)."""
    failed, su_sessions, admin_sessions = Counter(), Counter(), Counter()
    lines_read = 0
    for line in lines:
        rec = parse_line(line)
        if rec is None or rec["time"] < since:
            continue
        lines_read += 1
        msg = rec["msg"]
        if rec["level"] == "FATAL":
            for pattern in FAILED_RES:
                m = pattern.search(msg)
                if m:
                    failed[(m.group("user"), m.groupdict().get("client") or rec["client"])] += 1
                    break
        elif rec["level"] == "LOG":
            m = AUTHORIZED_RE.search(msg)
            if m:
                key = (m.group("user"), rec["client"])
                if m.group("user") in superusers:
                    su_sessions[key] += 1
                elif m.group("user") in admins:
                    admin_sessions[key] += 1
    findings = []
    for (user, client), n in sorted(failed.items()):
        severity = "high" if n >= threshold else "low"
        findings.append(finding(severity, "failed_login", f"{user}@{client}", f"{n} failed login(s)"))
    for (user, client), n in sorted(su_sessions.items()):
        remote = client not in ("[local]", "")
        findings.append(
            finding(
                "high" if remote else "info",
                "superuser_session",
                f"{user}@{client}",
                f"{n} superuser session(s)" + (" over the network" if remote else " on the local socket"),
            )
        )
    for (user, client), n in sorted(admin_sessions.items()):
        findings.append(finding("info", "admin_session", f"{user}@{client}", f"{n} admin session(s)"))
    return findings, lines_read


def log_files(directory, since):
    """Log files written to since `since` (older ones cannot hold newer lines)."""
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and dt.datetime.fromtimestamp(os.path.getmtime(path), dt.UTC) >= since:
            out.append(path)
    return out


def check_hba(rules):
    findings = []
    for r in rules:
        if r["error"]:
            findings.append(finding("high", "pg_hba", f"line {r['line_number']}", r["error"]))
            continue
        method, kind = r["auth_method"], r["type"]
        ok = method == "reject" or (kind == "local" and method in ("peer", "scram-sha-256"))
        ok = ok or (kind == "hostssl" and method in ("scram-sha-256", "cert"))
        if not ok:
            severity = "critical" if method == "trust" else "high"
            detail = f"{kind} {','.join(r['database'])} {','.join(r['user_name'])} {r['address'] or ''} {method}"
            findings.append(finding(severity, "pg_hba", f"line {r['line_number']}", detail))
    return findings


def check_privileged(roles, allowed):
    findings = []
    for r in roles:
        if r["rolname"] in allowed:
            continue
        if r["rolsuper"]:
            findings.append(finding("high", "privileged_role", r["rolname"], "superuser"))
        for attr in ("rolcreaterole", "rolbypassrls", "rolreplication"):
            if r[attr]:
                findings.append(finding("medium", "privileged_role", r["rolname"], attr[3:]))
    return findings


def check_public(grants, allowed):
    findings = []
    for g in grants:
        key = f"{g['database']}:{g['kind']}:{g['object']}"
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed):
            continue
        severity = "high" if g["kind"] in ("table", "sequence") else "medium"
        findings.append(finding(severity, "public_grant", key, f"PUBLIC has {g['privileges']}"))
    return findings


CALL_RE = re.compile(r'(?:"?([A-Za-z_][A-Za-z0-9_$]*)"?\s*\.\s*)?"?([A-Za-z_][A-Za-z0-9_$]*)"?\s*\(')


STRING_RE = re.compile(r"'(?:[^']|'')*'")


def called_names(body):
    """(schema or None, name) of everything that looks like a call in a
    function body, outside string literals (dynamic SQL cannot be read this
    way); resolving them against the catalog weeds out keywords."""
    return {(m.group(1), m.group(2)) for m in CALL_RE.finditer(STRING_RE.sub("''", body or ""))}


def pinned_search_path(proconfig):
    for item in proconfig or []:
        if item.startswith("search_path="):
            return [p.strip().strip('"') for p in item.split("=", 1)[1].split(",") if p.strip()]
    return None


def is_pinned(path):
    """A pinned search_path names its schemas: no "$user" (a schema anyone
    could create with that name), and pg_temp (the caller's own temporary
    schema, searched first when it is not named) last."""
    return path is not None and "$user" not in path and bool(path) and path[-1] == "pg_temp"


def check_definer_search_path(functions):
    """SECURITY DEFINER code without a pinned search_path runs whatever a
    caller's search_path finds first; so does a trigger function, in the
    session (a privileged one included) whose statement fires it."""
    findings = []
    for f in functions:
        if is_pinned(pinned_search_path(f["config"])):
            continue
        if f["secdef"]:
            detail = f"definer of {f['owner']}: search_path not pinned"
            findings.append(finding("high", "definer_search_path", f["signature"], detail))
        elif f["trigger"]:
            detail = "trigger function: search_path not pinned"
            findings.append(finding("high", "trigger_search_path", f["signature"], detail))
    return findings


def check_database_privileges(acl, roles):
    """Nobody but a superuser creates a schema in the database (it could be
    named after a privileged role, first on that role's search_path), and
    nobody may create temporary tables there."""
    findings = []
    for a in acl:
        if a["grantee"] in roles.get("superusers", set()) or a["grantee"] == a["owner"]:
            continue
        if a["privilege"] in ("CREATE", "TEMPORARY"):
            findings.append(
                finding(
                    "high",
                    "database_privilege",
                    f"{a['database']}:{a['grantee']} {a['privilege']}",
                    "only the superuser may create schemas or temporary tables",
                )
            )
    return findings


def check_schemas(schemas, privileged):
    """A schema owned by anyone but a superuser or an owner role is someone's
    foothold; one named after a privileged role is on that role's path."""
    findings = []
    for sc in schemas:
        if sc["name"] in privileged and not sc["owner_privileged"]:
            findings.append(
                finding(
                    "critical",
                    "schema_squatted",
                    f"{sc['database']}:{sc['name']}",
                    f"owned by {sc['owner']}: first on the search_path of role {sc['name']}",
                )
            )
        elif not sc["owner_privileged"]:
            findings.append(
                finding(
                    "high",
                    "schema_owner",
                    f"{sc['database']}:{sc['name']}",
                    f"owned by {sc['owner']}, who is not a superuser nor an owner role",
                )
            )
    return findings


def check_logins(roles, pinned_roles):
    """Every login that is not a superuser or a replication login has a
    connection limit; nobody but a superuser may signal other roles'
    sessions; the privileged roles' search_path is pinned."""
    findings = []
    for r in roles:
        if r["rolcanlogin"] and not r["rolsuper"] and not r["rolreplication"] and r["rolconnlimit"] < 0:
            findings.append(finding("medium", "connection_limit", r["rolname"], "no connection limit"))
        if r["signal_backend"] and not r["rolsuper"]:
            findings.append(
                finding(
                    "high",
                    "signal_backend",
                    r["rolname"],
                    "member of pg_signal_backend: may end the WAL senders' sessions",
                )
            )
        path = [p.strip().strip('"') for p in (r["search_path"] or "").split(",") if p.strip()] or None
        if (r["rolsuper"] or r["rolname"] in pinned_roles) and not is_pinned(path):
            findings.append(
                finding(
                    "high",
                    "pinned_search_path",
                    r["rolname"],
                    f"search_path {r['search_path'] or 'default ($user, public)'}: not pinned",
                )
            )
    return findings


def check_privileged_calls(functions, procs, superusers, key_roles):
    """Code that runs with a superuser's or a key owner's privileges must not
    call SECURITY INVOKER code another role owns: that role could replace it
    and run anything with those privileges."""
    by_name = {}
    for p in procs:
        by_name.setdefault(p["name"], []).append(p)
    findings = []
    for f in functions:
        if f["owner"] not in superusers and f["owner"] not in key_roles:
            continue
        path = pinned_search_path(f["config"])
        for schema, name in sorted(called_names(f["body"]), key=lambda x: (x[0] or "", x[1])):
            for callee in by_name.get(name, []):
                if schema is not None and callee["schema"] != schema:
                    continue
                if schema is None and path is not None and callee["schema"] not in path:
                    continue
                if callee["owner"] in superusers or callee["owner"] == f["owner"] or callee["secdef"]:
                    continue
                findings.append(
                    finding(
                        "critical",
                        "privileged_calls_foreign_code",
                        f["signature"],
                        f"runs as {f['owner']} and calls {callee['signature']}, owned by {callee['owner']}",
                    )
                )
    return findings


def check_public_definers(functions):
    return [
        finding("high", "definer_public_execute", f["signature"], f"SECURITY DEFINER owned by {f['owner']}")
        for f in functions
        if f["secdef"] and f["public_execute"]
    ]


def check_owner_members(members):
    return [
        finding("critical", "owner_member", m["member"], f"login member of {m['role']}: acts as the owner")
        for m in members
    ]


def check_protected_dml(grants, allowed):
    return [
        finding("high", "protected_dml", g["object"], f"{g['grantee']} may {g['privilege']}")
        for g in grants
        if g["grantee"] not in allowed
    ]


def check_disabled_triggers(triggers):
    return [
        finding("high", "disabled_trigger", f"{t['table']}.{t['trigger']}", f"trigger disabled ({t['enabled']})")
        for t in triggers
    ]


def backup_age(path, max_hours, now):
    if not path or not os.path.exists(path):
        return [finding("info", "backup", path or "-", "no backup status yet")], None
    with open(path) as f:
        finished = dt.datetime.fromisoformat(json.load(f)["finished_at"])
    hours = (now - finished).total_seconds() / 3600
    severity = "high" if hours > max_hours else "info"
    return [finding(severity, "backup", path, f"last good backup {hours:.1f} h ago")], round(hours, 2)


ARCHIVER_SQL = """
SELECT archived_count, failed_count, last_archived_wal, last_failed_wal,
       last_archived_time, last_failed_time,
       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing,
       current_setting('archive_mode') AS archive_mode
  FROM pg_stat_archiver
"""


def check_archiver(row):
    """WAL archiving as the primary sees it: failing (the last attempt failed
    after the last success) is high; otherwise the last archived segment."""
    if row["archive_mode"] == "off":
        return [finding("high", "archiving", "archive_mode", "WAL archiving is off: no point-in-time recovery")]
    failures = f"{row['failed_count']} failures since the statistics reset"
    if row["failing"]:
        detail = (f"WAL archiving is failing: last failure {row['last_failed_time']}, "
                  f"last success {row['last_archived_time']} ({failures})")  # fmt: skip
        return [finding("high", "archiving", row["last_failed_wal"] or "-", detail)]
    detail = f"last archived WAL at {row['last_archived_time']}, {row['archived_count']} archived, {failures}"
    return [finding("info", "archiving", row["last_archived_wal"] or "-", detail)]


def check_repository(summary, max_age_hours, now):
    """The backup repository in brief (pgops-pgbackrest summary): the last
    good backup of each kind and its age (older than allowed is high; a kind
    not taken yet, as on a new cluster, is said), and the repository's size."""
    findings = []
    for kind, hours_allowed in sorted((k, float(v)) for k, v in max_age_hours.items()):
        last = summary.get("last", {}).get(kind)
        if not last:
            findings.append(finding("info", "repository", kind, f"no good {kind} backup in the repository yet"))
            continue
        hours = (now.timestamp() - last["stopped_at"]) / 3600
        severity = "high" if hours > hours_allowed else "info"
        findings.append(
            finding(severity, "repository", kind, f"last good {kind} backup {last['label']} {hours:.1f} h ago")
        )
    size_mb = summary.get("repository_bytes", 0) / 1048576
    detail = (f"{summary.get('backups', 0)} backups, {size_mb:.1f} MB in the repository (WAL not included), "
              f"archive {summary.get('archive_min')} to {summary.get('archive_max')}")  # fmt: skip
    findings.append(finding("info", "repository", summary.get("stanza", "-"), detail))
    return findings


# Grants to PUBLIC (grantee 0) on objects that are not part of an extension
# nor of the system schemas.
PUBLIC_SQL = """
WITH objs AS (
  SELECT 'database' AS kind, datname::text AS object, datacl AS acl, 0::oid AS oid, 0::oid AS classid
    FROM pg_database WHERE datname = current_database()
  UNION ALL
  SELECT 'schema', nspname, nspacl, oid, 'pg_namespace'::regclass FROM pg_namespace
  UNION ALL
  SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, format('%I.%I', n.nspname, c.relname),
         c.relacl, c.oid, 'pg_class'::regclass
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f')
  UNION ALL
  SELECT 'function', p.oid::regprocedure::text, p.proacl, p.oid, 'pg_proc'::regclass
    FROM pg_proc p
)
SELECT o.kind, o.object, string_agg(a.privilege_type, ',' ORDER BY a.privilege_type) AS privileges
  FROM objs o CROSS JOIN LATERAL aclexplode(o.acl) a
 WHERE a.grantee = 0
   AND o.object !~ '^(pg_catalog|information_schema|pg_toast)(\\.|$)'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.oid AND d.deptype = 'e')
   AND NOT (o.kind = 'function' AND EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                                             WHERE p.oid = o.oid AND n.nspname IN ('pg_catalog','information_schema')))
 GROUP BY o.kind, o.object
"""
# Objects whose ACL is NULL have PostgreSQL's built-in defaults: PUBLIC may
# CONNECT/TEMP a database and EXECUTE a function.
PUBLIC_DEFAULT_SQL = """
SELECT 'database' AS kind, datname::text AS object, 'CONNECT,TEMPORARY' AS privileges
  FROM pg_database WHERE datname = current_database() AND datacl IS NULL
UNION ALL
SELECT 'function', p.oid::regprocedure::text, 'EXECUTE'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proacl IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                               AND d.deptype = 'e')
"""
ROLES_SQL = """
SELECT a.rolname, a.rolsuper, a.rolcreaterole, a.rolbypassrls, a.rolreplication, a.rolcanlogin, a.rolconnlimit,
       coalesce(a.rolpassword, '') ~ '^md5' AS md5_password,
       pg_has_role(a.oid, 'pg_signal_backend', 'MEMBER') AS signal_backend,
       (SELECT string_agg(split_part(c, '=', 2), ',') FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) c
         WHERE s.setrole = a.oid AND s.setdatabase = 0 AND c LIKE 'search_path=%%') AS search_path
  FROM pg_authid a WHERE a.rolname !~ '^pg_'
"""
DATABASE_ACL_SQL = """
SELECT d.datname AS database, CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       pg_get_userbyid(d.datdba) AS owner, a.privilege_type AS privilege
  FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a WHERE d.datname = current_database()
"""
SCHEMAS_SQL = """
SELECT current_database() AS database, n.nspname AS name, pg_get_userbyid(n.nspowner) AS owner,
       (o.rolsuper OR o.rolname = ANY(%(owners)s) OR o.rolname = 'pg_database_owner') AS owner_privileged
  FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
 WHERE n.nspname !~ '^pg_(temp|toast_temp)_[0-9]+$'
"""


# Every non-extension function outside the system schemas: owner, SECURITY
# DEFINER, pinned settings, body, and whether PUBLIC may execute it.
FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text AS signature, n.nspname AS schema, p.proname AS name,
       pg_get_userbyid(p.proowner) AS owner, p.prosecdef AS secdef, p.proconfig AS config,
       p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype) AS trigger,
       coalesce(pg_get_function_sqlbody(p.oid), p.prosrc) AS body,
       (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                                     WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')) AS public_execute
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                               AND d.deptype = 'e')
"""
OWNER_MEMBERS_SQL = """
SELECT l.rolname AS member, o.rolname AS role FROM pg_roles l CROSS JOIN pg_roles o
 WHERE l.rolcanlogin AND NOT l.rolsuper AND o.rolname = ANY(%(roles)s) AND l.oid <> o.oid
   AND pg_has_role(l.oid, o.oid, 'MEMBER')
"""
# Write privileges on the protected tables and their partitions, and on
# the protected columns.
PROTECTED_DML_SQL = """
WITH rels AS (
  SELECT t.relid AS rel FROM unnest(%(tables)s::text[]) name
   CROSS JOIN LATERAL (SELECT to_regclass(name) AS r) x
   CROSS JOIN LATERAL (SELECT x.r AS relid UNION ALL SELECT relid FROM pg_partition_tree(x.r) WHERE level > 0) t
   WHERE x.r IS NOT NULL
)
SELECT DISTINCT c.oid::regclass::text AS object, coalesce(pg_get_userbyid(a.grantee), 'PUBLIC') AS grantee,
       a.privilege_type AS privilege
  FROM rels JOIN pg_class c ON c.oid = rels.rel CROSS JOIN LATERAL aclexplode(c.relacl) a
 WHERE a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') AND a.grantee <> c.relowner
UNION
SELECT format('%%s.%%s', at.attrelid::regclass, at.attname), coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'),
       a.privilege_type
  FROM unnest(%(columns)s::text[]) col
 CROSS JOIN LATERAL (SELECT to_regclass(regexp_replace(col, '\\.[^.]+$', '')) AS r,
                            regexp_replace(col, '^.*\\.', '') AS attname) x
  JOIN pg_attribute at ON at.attrelid = x.r AND at.attname = x.attname
 CROSS JOIN LATERAL aclexplode(at.attacl) a
 WHERE a.privilege_type IN ('INSERT', 'UPDATE')
UNION
SELECT format('%%s.%%s', c.oid::regclass, x.attname), coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'),
       a.privilege_type
  FROM unnest(%(columns)s::text[]) col
 CROSS JOIN LATERAL (SELECT to_regclass(regexp_replace(col, '\\.[^.]+$', '')) AS r,
                            regexp_replace(col, '^.*\\.', '') AS attname) x
  JOIN pg_class c ON c.oid = x.r
 CROSS JOIN LATERAL aclexplode(c.relacl) a
 WHERE a.privilege_type IN ('INSERT', 'UPDATE') AND a.grantee <> c.relowner
"""
DISABLED_TRIGGERS_SQL = """
SELECT tg.tgrelid::regclass::text AS table, tg.tgname AS trigger, tg.tgenabled AS enabled
  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT tg.tgisinternal AND tg.tgenabled IN ('D', 'R') AND n.nspname = ANY(%(schemas)s)
"""


def collect(module, psycopg, params, now, since):
    # Names come out schema-qualified (pg_catalog only on the search_path).
    conninfo = {
        "host": params["login_unix_socket"],
        "port": params["login_port"],
        "options": "-c search_path=pg_catalog",
    }
    findings, summary = [], {}
    with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        summary["in_recovery"] = cur.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]
        if not summary["in_recovery"]:
            findings += check_archiver(cur.execute(ARCHIVER_SQL).fetchone())
        roles = cur.execute(ROLES_SQL).fetchall()
        superusers = {r["rolname"] for r in roles if r["rolsuper"]}
        findings += check_privileged(roles, set(params["allowed_privileged"]))
        findings += check_logins(roles, set(params["owner_roles"] + params["key_roles"]))
        for r in roles:
            if r["md5_password"]:
                findings.append(finding("high", "password_storage", r["rolname"], "MD5 password hash"))
        admins = {
            r["member"]
            for r in cur.execute(
                "SELECT m.rolname AS member FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
                "JOIN pg_roles m ON m.oid = am.member WHERE g.rolname = ANY(%s)",
                (params["admin_roles"],),
            )
        }
        findings += check_hba(cur.execute("SELECT * FROM pg_hba_file_rules ORDER BY line_number").fetchall())
        settings = {
            r["name"]: r["setting"]
            for r in cur.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('ssl', 'ssl_min_protocol_version', "
                "'ssl_cert_file', 'password_encryption', 'log_connections', 'logging_collector')"
            )
        }
        summary["settings"] = settings
        if settings["ssl"] != "on":
            findings.append(finding("critical", "tls", "ssl", "TLS is off"))
        if settings["ssl_min_protocol_version"] in ("TLSv1", "TLSv1.1"):
            findings.append(finding("high", "tls", "ssl_min_protocol_version", settings["ssl_min_protocol_version"]))
        if settings["password_encryption"] != SCRAM:
            findings.append(finding("high", "password_storage", "password_encryption", "not scram-sha-256"))
        if settings["log_connections"] != "on":
            findings.append(finding("medium", "logging", "log_connections", "off: sessions cannot be audited"))
        plain = cur.execute(
            "SELECT a.usename, host(a.client_addr) AS client FROM pg_stat_activity a JOIN pg_stat_ssl s "
            "ON s.pid = a.pid WHERE a.client_addr IS NOT NULL AND NOT s.ssl"
        ).fetchall()
        for r in plain:
            findings.append(finding("high", "tls", f"{r['usename']}@{r['client']}", "connected without TLS"))
        summary["cert_days_left"] = cert_days_left(settings["ssl_cert_file"], now)
        if summary["cert_days_left"] is not None and summary["cert_days_left"] < params["cert_warn_days"]:
            findings.append(
                finding("high", "tls", settings["ssl_cert_file"], f"expires in {summary['cert_days_left']} days")
            )
        databases = [r["datname"] for r in cur.execute("SELECT datname FROM pg_database WHERE datallowconn")]
        members = cur.execute(OWNER_MEMBERS_SQL, {"roles": params["owner_roles"] + params["key_roles"]}).fetchall()
        findings += check_owner_members(members)
    grants = []
    for db in databases:
        with psycopg.connect(dbname=db, autocommit=True, **conninfo) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            for sql in (PUBLIC_SQL, PUBLIC_DEFAULT_SQL):
                grants += [dict(r, database=db) for r in cur.execute(sql)]
            functions = cur.execute(FUNCTIONS_SQL).fetchall()
            procs = [{**f, "signature": f"{db}:{f['signature']}"} for f in functions]
            functions = [{**f, "signature": f"{db}:{f['signature']}"} for f in functions]
            findings += check_definer_search_path(functions)
            findings += check_public_definers(functions)
            findings += check_privileged_calls(functions, procs, superusers, set(params["key_roles"]))
            privileged = superusers | set(params["owner_roles"] + params["key_roles"])
            schemas = cur.execute(SCHEMAS_SQL, {"owners": params["owner_roles"] + params["key_roles"]}).fetchall()
            findings += check_schemas(schemas, privileged)
            if db == params["database"]:
                acl = cur.execute(DATABASE_ACL_SQL).fetchall()
                findings += check_database_privileges(acl, {"superusers": superusers})
                args = {"tables": params["protected_tables"], "columns": params["protected_columns"]}
                findings += check_protected_dml(cur.execute(PROTECTED_DML_SQL, args).fetchall(),
                                                set(params["dml_allowed_roles"]))  # fmt: skip
                triggers = cur.execute(DISABLED_TRIGGERS_SQL, {"schemas": params["trigger_schemas"]}).fetchall()
                findings += check_disabled_triggers(triggers)
    findings += check_public(grants, params["public_allowed"])

    files = log_files(params["log_directory"], since) if os.path.isdir(params["log_directory"]) else []
    if not files:
        findings.append(finding("medium", "logging", params["log_directory"], "no log files to read"))

    def lines():
        for path in files:
            with open(path, errors="replace") as f:
                yield from f

    log_findings, summary["log_lines_read"] = scan_log_lines(
        lines(), since, superusers, admins, params["failed_login_threshold"]
    )
    findings += log_findings
    summary["log_files"] = files
    backup_findings, summary["backup_age_hours"] = backup_age(
        params["backup_status_file"], params["backup_max_age_hours"], now
    )
    findings += backup_findings
    if params["repository_summary_command"] and not summary["in_recovery"]:
        rc, out, err = module.run_command(params["repository_summary_command"])
        if rc != 0:
            findings.append(finding("high", "repository", "-", f"the repository cannot be read: {err.strip()[-300:]}"))
        else:
            summary["repository"] = json.loads(out)
            findings += check_repository(summary["repository"], params["repository_max_age_hours"], now)
    return findings, summary


def cert_days_left(path, now):
    try:
        from cryptography import x509

        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (ImportError, OSError, ValueError):
        return None
    return (cert.not_valid_after.replace(tzinfo=dt.UTC) - now).days


def main():
    module = AnsibleModule(
        argument_spec={
            "login_unix_socket": {"type": "str", "required": True},
            "login_port": {"type": "int", "default": 5432},
            "log_directory": {"type": "path", "required": True},
            "since": {"type": "str", "default": ""},
            "window_hours": {"type": "int", "default": 24},
            "failed_login_threshold": {"type": "int", "default": 5},
            "allowed_privileged": {"type": "list", "elements": "str", "default": ["postgres"]},
            "admin_roles": {"type": "list", "elements": "str", "default": ["admin"]},
            "public_allowed": {"type": "list", "elements": "str", "default": []},
            "backup_status_file": {"type": "path"},
            "backup_max_age_hours": {"type": "int", "default": 26},
            "repository_summary_command": {"type": "list", "elements": "str", "default": []},
            "repository_max_age_hours": {"type": "dict", "default": {}},
            "cert_warn_days": {"type": "int", "default": 30},
            "host": {"type": "str", "default": ""},
            "database": {"type": "str", "default": "payments"},
            "owner_roles": {"type": "list", "elements": "str", "default": ["payments_owner"]},
            "key_roles": {"type": "list", "elements": "str", "default": []},
            "protected_tables": {"type": "list", "elements": "str", "default": []},
            "protected_columns": {"type": "list", "elements": "str", "default": []},
            "dml_allowed_roles": {"type": "list", "elements": "str", "default": []},
            "trigger_schemas": {"type": "list", "elements": "str", "default": ["payments"]},
        },
        supports_check_mode=True,
    )
    try:
        import psycopg
        import psycopg.rows
    except ImportError:
        module.fail_json(msg="python3-psycopg is needed on the database host")
    now = dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(hours=module.params["window_hours"])
    if module.params["since"]:
        try:
            since = dt.datetime.fromisoformat(module.params["since"].replace("Z", "+00:00"))
        except ValueError:
            module.fail_json(msg=f"since={module.params['since']!r} is not an ISO 8601 time")
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    try:
        findings, summary = collect(module, psycopg, module.params, now, since)
    except psycopg.Error as e:
        module.fail_json(msg=f"cannot read the server: {e}")
    for f in findings:
        f["host"] = module.params["host"]
    findings.sort(key=lambda f: (-f["rank"], f["check"], f["subject"]))
    module.exit_json(changed=False, findings=findings, summary=summary)


if __name__ == "__main__":
    main()

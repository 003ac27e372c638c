"""The access matrix: every group role x operation, through a real TLS
connection as a login user of that group. Allowed cells succeed (or fail for
another reason than privilege: a payment that does not exist); denied ones
fail with a permission error (SQLSTATE 42501). Nothing is left behind: each
probe runs in a transaction that is rolled back. docs/schema.md states the
same matrix and why."""

import psycopg
import pytest
from conftest import USERS
from psycopg import errors

from pgops import privileges
from pgops.testing import connect, create_payer, fetch_ca, host_address, psql

EPOCH = "'2000-01-01'::timestamptz"
MATRIX = privileges.load()
# Logical group of each group role (the matrix's keys).
LOGICAL = {name: group for group, name in MATRIX["names"].items()}


def table(name, privilege, column=None):
    return lambda group: privileges.may(MATRIX, group, name, privilege, column)


def function(name):
    return lambda group: privileges.may_execute(MATRIX, group, name)


def nobody(_group):
    return False


# operation: (SQL, what the matrix must grant for it). The expected outcome
# of every cell comes from the matrix (roles/access/vars/main.yml), the same
# data the access role applies and docs/schema.md renders: a test fails when
# the three disagree.
PROBES = {
    "select": ("SELECT count(*) FROM payments.merchant", table("merchant", "SELECT")),
    "select_transactions": ("SELECT count(*) FROM payments.transaction", table("transaction", "SELECT", "id")),
    "read_client_ip": ("SELECT client_ip FROM payments.transaction LIMIT 1",
                       table("transaction", "SELECT", "client_ip")),
    "read_client_network": ("SELECT client_network FROM payments.transaction_masked LIMIT 1",
                            table("transaction_masked", "SELECT")),
    "read_email": ("SELECT email FROM payments.customer LIMIT 1", table("customer", "SELECT", "email")),
    "read_masked_email": ("SELECT email_masked FROM payments.customer_masked LIMIT 1",
                          table("customer_masked", "SELECT")),
    "insert_merchant": ("INSERT INTO payments.merchant (name, country_code, default_currency) "
                        "VALUES ('probe', 'FR', 'EUR')", table("merchant", "INSERT")),
    "update_merchant": ("UPDATE payments.merchant SET name = name", table("merchant", "UPDATE", "name")),
    "delete_merchant": ("DELETE FROM payments.merchant WHERE id = -1", table("merchant", "DELETE")),
    # Any mode above ROW EXCLUSIVE needs a table-wide UPDATE, DELETE or TRUNCATE.
    "lock_merchant": ("LOCK TABLE payments.merchant IN EXCLUSIVE MODE NOWAIT", table("merchant", "UPDATE")),
    "lock_ip_network": ("LOCK TABLE payments.ip_network IN ACCESS EXCLUSIVE MODE NOWAIT",
                        table("ip_network", "UPDATE")),
    "update_email": ("UPDATE payments.customer SET email = email WHERE id = -1", table("customer", "UPDATE", "email")),
    "change_email": ("SELECT payments.change_customer_email(-1, 'probe@example.test', 'probe', 'probe')",
                     function("change_customer_email")),
    "read_password_hash": ("SELECT password_hash FROM payments.customer LIMIT 1",
                           table("customer", "SELECT", "password_hash")),
    "read_token": ("SELECT token FROM payments.customer_payment_method LIMIT 1",
                   table("customer_payment_method", "SELECT", "token")),
    "write_transaction": ("UPDATE payments.transaction SET updated_at = updated_at WHERE id = -1",
                          table("transaction", "UPDATE", "updated_at")),
    "write_reference": ("UPDATE payments.currency SET name = name WHERE code = 'EUR'",
                        table("currency", "UPDATE", "name")),
    "ddl": ("CREATE TABLE payments.access_probe (id int)", nobody),
    "create_schema": ("CREATE SCHEMA access_probe", nobody),
    "temp_table": ("CREATE TEMPORARY TABLE access_probe (id int)", nobody),
    "advisory_lock": ("SELECT pg_try_advisory_lock(7067)", nobody),
    "advisory_xact_lock": ("SELECT pg_advisory_xact_lock(1, 2)", nobody),
    "large_object": ("SELECT lo_from_bytea(0, '\\x00')", nobody),
    "audit_modify": ("UPDATE payments.transaction_state_change SET reason = 'rewritten'",
                     table("transaction_state_change", "UPDATE", "reason")),
    "authorize": ("SELECT * FROM payments.authorize(-1, 'probe', -1, -1, 100::bigint, 'EUR', NULL, 'mobile', "
                  "0.1::numeric, 'm')", function("authorize")),
    "capture": (f"SELECT payments.capture(-1, {EPOCH}, 'probe', 'probe')", function("capture")),
    "refund": (f"SELECT payments.refund(-1, {EPOCH}, 1, 'probe', 'probe', 'probe')", function("refund")),
    "create_customer": ("SELECT payments.create_customer('probe_user', 'probe password 123', 'p@x.test', 'P')",
                        function("create_customer")),
    "customer_full_name": ("SELECT payments.customer_full_name(-1)", function("customer_full_name")),
    "pii_decrypt": ("SELECT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer",
                    function("pii_decrypt")),
}  # fmt: skip


def allowed(role, operation):
    """The matrix's answer for a group role, with the groups it inherits
    (access_pii_members are members of the PII group)."""
    group = LOGICAL[role]
    groups = {group} | ({"pii"} if group in MATRIX["pii_members"] else set())
    return any(PROBES[operation][1](g) for g in groups)


def test_the_matrix_is_least_privilege():
    """What the issue and docs/schema.md say, read from the matrix itself:
    admin runs capture, cancel and refund but does not authorize; no group
    writes an e-mail but through change_customer_email(); people read
    neither plaintext e-mails nor client addresses."""
    assert {g for g in USERS if allowed(g, "authorize")} == {"payments_app"}
    assert {g for g in USERS if allowed(g, "refund")} == {"payments_app", "admin"}
    assert not any(allowed(g, "update_email") or allowed(g, "lock_merchant") for g in USERS)
    people = ("admin", "developer", "readonlyuser")
    assert not any(allowed(g, "read_email") or allowed(g, "read_client_ip") for g in people)
    assert all(allowed(g, "read_masked_email") and allowed(g, "read_client_network") for g in people)
    assert not any(allowed(g, "pii_decrypt") for g in USERS)


@pytest.fixture(scope="module")
def ca(host, tmp_path_factory):
    return fetch_ca(host, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def as_user(host, ca):
    def open_as(group):
        return connect(host_address(host), USERS[group], ca, dbname="payments")

    return open_as


@pytest.fixture(scope="module", autouse=True)
def some_rows(as_user):
    """A customer and an audited transaction exist, so the PII and audit probes touch real rows."""
    with as_user("payments_app") as conn:
        payer = create_payer(conn, "matrix", "matrix password 123", "Marie Matrix")
        conn.execute(
            "SELECT * FROM payments.authorize(%s, %s, %s, %s, 1000::bigint, 'EUR', '192.0.2.1'::inet, "
            "'desktop', 0.1::numeric, 'model-1')",
            (payer["merchant"], f"matrix-{payer['username']}", payer["customer"], payer["method"]),
        )
        conn.commit()
    return payer["username"]


@pytest.mark.parametrize("group", sorted(USERS))
def test_access_matrix(as_user, group):
    """Every operation as this group, on one connection, each in a
    transaction rolled back: allowed ones succeed (or fail for another
    reason than privilege: a payment that does not exist), denied ones fail
    with 42501. Every cell that disagrees with the matrix is listed."""
    wrong = []
    with as_user(group) as conn:
        for operation in sorted(PROBES):
            try:
                conn.execute(PROBES[operation][0])
                outcome = True
            except (errors.NoDataFound, errors.ForeignKeyViolation):
                outcome = True  # allowed, and refused for what it asked: no such payment, merchant or customer
            except errors.InsufficientPrivilege:
                outcome = False
            except psycopg.Error as e:
                outcome = f"{e.sqlstate} {e}"
            finally:
                conn.rollback()
            if outcome is not allowed(group, operation):
                wrong.append(f"{operation}: {outcome}, the matrix says {allowed(group, operation)}")
    assert wrong == [], "\n".join(wrong)


def test_readonly_sees_pii_only_as_ciphertext(as_user, some_rows):
    with as_user("readonlyuser") as conn:
        name_enc = conn.execute(
            "SELECT full_name_enc FROM payments.customer WHERE username = %s", (some_rows,)
        ).fetchone()[0]
        assert b"Marie" not in bytes(name_enc)
    with as_user("payments_app") as conn:
        clear = conn.execute(
            "SELECT payments.customer_full_name(id) FROM payments.customer WHERE username = %s", (some_rows,)
        ).fetchone()[0]
        assert clear == "Marie Matrix"


def test_key_reading_functions_are_not_executable(as_user):
    for group in USERS:
        for function in ("pii_key(1)", "pii_encrypt('x')", "pii_reencrypt(1)"):
            sql = f"SELECT payments.{function}"
            with as_user(group) as conn, pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql)


def test_nobody_is_a_member_of_the_owner_or_the_key_owner(host):
    assert psql(host, "SELECT count(*) FROM pg_auth_members WHERE roleid::regrole::text IN "
                "('payments_owner', 'pii_keyholder')") == "0"  # fmt: skip
    assert psql(host, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'payments_owner'") == "f"
    # The key owner reads server files; nothing else does.
    assert psql(host, "SELECT pg_has_role('pii_keyholder', 'pg_read_server_files', 'MEMBER')") == "t"
    owners = psql(
        host,
        "SELECT string_agg(DISTINCT proowner::regrole::text, ',') FROM pg_proc WHERE proname IN "
        "('pii_key', 'pii_encrypt', 'pii_decrypt', 'pii_reencrypt')",
        db="payments",
    )
    assert owners == "pii_keyholder"


def test_every_table_is_in_the_privilege_matrix(host, project_vars):
    """A table added by a migration without a decision in the matrix is
    readable by the readers only; none is."""
    tables = psql(
        host,
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'payments'::regnamespace "
        "AND relkind IN ('r', 'p', 'v') AND NOT relispartition",
        db="payments",
    ).split(",")
    assert sorted(tables) == sorted(project_vars("access")["__access_tables"])


def test_login_users_are_members_of_exactly_their_groups(host):
    rows = psql(
        host,
        "SELECT r.rolname, string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_roles r "
        "JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles g ON g.oid = m.roleid "
        "WHERE r.rolname LIKE 'm\\_%' GROUP BY 1 ORDER BY 1",
    ).splitlines()
    assert rows == [
        "m_admin|admin",
        "m_app|payments_app",
        "m_batch|readonlyuser",
        "m_developer|developer",
        "m_monitor|monitoring",
        "m_pii|pii_reader",
        "m_reader|readonlyuser",
    ]


def test_no_group_or_login_has_dangerous_attributes(host):
    """Only the replication role replicates, and nothing else is special."""
    assert (
        psql(
            host,
            "SELECT string_agg(rolname || ':' || rolreplication, ',') FROM pg_roles "
            "WHERE rolname NOT LIKE 'pg\\_%' AND rolname <> 'postgres' "
            "AND (rolsuper OR rolcreaterole OR rolbypassrls OR rolreplication OR rolcreatedb)",
        )
        == "replicator:true"
    )
    assert psql(host, "SELECT rolsuper OR rolcreaterole OR rolbypassrls OR rolcreatedb FROM pg_roles "
                "WHERE rolname = 'replicator'") == "f"  # fmt: skip
    assert psql(host, "SELECT count(*) FROM pg_roles WHERE rolname IN ('payments_owner', 'pii_keyholder') "
                "AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolbypassrls)") == "0"  # fmt: skip


def test_passwords_are_stored_as_scram_verifiers(host):
    stored = psql(host, "SELECT rolpassword FROM pg_authid WHERE rolname LIKE 'm\\_%'").splitlines()
    assert len(stored) == 8 and all(p.startswith("SCRAM-SHA-256$4096:") for p in stored)


def test_nothing_granted_to_public_in_the_schema(host):
    assert (
        psql(
            host,
            "SELECT count(*) FROM (SELECT relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'payments' UNION ALL SELECT proacl FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = 'payments' UNION ALL SELECT nspacl FROM pg_namespace "
            "WHERE nspname = 'payments') a, unnest(a.relacl) item WHERE item::text LIKE '=%'",
            db="payments",
        )
        == "0"
    )
    assert psql(host, "SELECT has_database_privilege('public', 'payments', 'CONNECT')") == "f"


def test_a_partition_created_later_grants_exactly_the_same(host, as_user):
    psql(
        host,
        "SELECT partman.create_partition_time('payments.transaction', ARRAY['2031-01-15'::timestamptz])",
        db="payments",
    )
    partition = "payments.transaction_p2031_01"
    for group in USERS:
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            on_parent = psql(
                host, f"SELECT has_table_privilege('{group}', 'payments.transaction', '{privilege}')", db="payments"
            )
            on_partition = psql(
                host, f"SELECT has_table_privilege('{group}', '{partition}', '{privilege}')", db="payments"
            )
            assert (group, privilege, on_partition) == (group, privilege, on_parent)
    with as_user("payments_app") as conn:
        conn.execute(f"SELECT count(*) FROM {partition}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {partition}")
    # People read the parent's columns, never a partition's (its client_ip).
    with as_user("readonlyuser") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SELECT client_ip FROM {partition}")

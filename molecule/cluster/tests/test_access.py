"""The access matrix: every group role x operation, through a real TLS
connection as a login user of that group. Allowed cells succeed (or fail for
another reason than privilege: a payment that does not exist); denied ones
fail with a permission error (SQLSTATE 42501). Nothing is left behind: each
probe runs in a transaction that is rolled back. docs/schema.md states the
same matrix and why."""

import pytest
from conftest import USERS
from psycopg import errors

from pgops.testing import connect, create_payer, fetch_ca, host_address, psql

EPOCH = "'2000-01-01'::timestamptz"
PROBES = {
    "select": "SELECT count(*) FROM payments.merchant",
    "select_transactions": "SELECT count(*) FROM payments.transaction",
    "insert_merchant": "INSERT INTO payments.merchant (name, country_code, default_currency) "
    "VALUES ('probe', 'FR', 'EUR')",
    "update_merchant": "UPDATE payments.merchant SET name = name",
    "delete_merchant": "DELETE FROM payments.merchant WHERE id = -1",
    "update_email": "UPDATE payments.customer SET email = email WHERE id = -1",
    "read_password_hash": "SELECT password_hash FROM payments.customer LIMIT 1",
    "read_token": "SELECT token FROM payments.customer_payment_method LIMIT 1",
    "write_transaction": "UPDATE payments.transaction SET updated_at = updated_at WHERE id = -1",
    "write_reference": "UPDATE payments.currency SET name = name WHERE code = 'EUR'",
    "ddl": "CREATE TABLE payments.access_probe (id int)",
    "audit_modify": "UPDATE payments.transaction_state_change SET reason = 'rewritten'",
    "authorize": "SELECT * FROM payments.authorize(-1, 'probe', -1, -1, 100::bigint, 'EUR', NULL, 'mobile', "
    "0.1::numeric, 'm')",
    "refund": f"SELECT payments.refund(-1, {EPOCH}, 1, 'probe', 'probe', 'probe')",
    "create_customer": "SELECT payments.create_customer('probe_user', 'probe password 123', 'p@x.test', 'P')",
    "pii_decrypt": "SELECT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer",
}

ALLOWED = {
    "admin": {"select", "select_transactions", "insert_merchant", "update_merchant", "delete_merchant",
              "update_email", "authorize", "refund"},
    "developer": {"select", "select_transactions", "insert_merchant", "update_merchant", "delete_merchant",
                  "update_email"},
    "readonlyuser": {"select", "select_transactions"},
    "payments_app": {"select", "select_transactions", "insert_merchant", "update_merchant", "update_email",
                     "read_token", "authorize", "refund", "create_customer", "pii_decrypt"},
    "pii_reader": {"pii_decrypt"},
}  # fmt: skip


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
@pytest.mark.parametrize("operation", sorted(PROBES))
def test_access_matrix(as_user, group, operation):
    with as_user(group) as conn:
        try:
            if operation in ALLOWED[group]:
                try:
                    conn.execute(PROBES[operation])
                except errors.InsufficientPrivilege:
                    raise
                except (errors.NoDataFound, errors.ForeignKeyViolation):
                    pass  # allowed, and refused for what it asked: no such payment, merchant or customer
            else:
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(PROBES[operation])
        finally:
            conn.rollback()


def test_readonly_sees_pii_only_as_ciphertext(as_user, some_rows):
    with as_user("readonlyuser") as conn:
        name_enc = conn.execute(
            "SELECT full_name_enc FROM payments.customer WHERE username = %s", (some_rows,)
        ).fetchone()[0]
        assert b"Marie" not in bytes(name_enc)
    with as_user("payments_app") as conn:
        clear = conn.execute(
            "SELECT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer "
            "WHERE username = %s",
            (some_rows,),
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
        "AND relkind IN ('r', 'p') AND NOT relispartition",
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
    with as_user("readonlyuser") as conn:
        conn.execute(f"SELECT count(*) FROM {partition}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {partition}")

"""The attack catalogue: every way a login of each group might escalate,
move money outside the payment functions, or forge or erase the audit trail,
tried as a real login user of that group over TLS. Each attempt is refused
with SQLSTATE 42501 (insufficient privilege) or the documented error, and
the database is exactly as it was afterwards: every row of the payments and
pgops tables, every function definition, owner, ACL, membership and trigger
state (the last test compares fingerprints taken before and after)."""

import secrets

import psycopg
import pytest
from conftest import PLAIN, USERS
from psycopg import errors

from pgops.testing import connect, create_payer, fetch_ca, host_address, psql

# Everything the database holds that an attack could change. Small tables:
# the catalogue runs on a test deploy.
FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
  SELECT format('%s %s', c.oid::regclass, (xpath('/row/h/text()', query_to_xml(
           format('SELECT md5(coalesce(string_agg(t::text, '','' ORDER BY t::text), '''')) AS h FROM ONLY %s t',
                  c.oid::regclass), false, true, '')))[1]::text)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname IN ('payments', 'pgops') AND c.relkind = 'r'
  UNION ALL
  SELECT format('fn %s %s %s %s %s', p.oid::regprocedure, p.proowner::regrole, p.prosecdef, p.proconfig,
                md5(pg_get_functiondef(p.oid)))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname IN ('payments', 'pgops', 'public') AND p.prokind <> 'a'
  UNION ALL
  SELECT format('tg %s %s %s', tgrelid::regclass, tgname, tgenabled) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT format('et %s %s', evtname, evtenabled) FROM pg_event_trigger
  UNION ALL
  SELECT format('rel %s %s', c.oid::regclass, c.relkind)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('payments', 'pgops')
  UNION ALL
  SELECT pgops.access_fingerprint('payments', ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_'))
  UNION ALL
  SELECT format('role %s %s %s', rolname, rolsuper, rolcanlogin) FROM pg_roles
  UNION ALL
  SELECT format('member %s %s', roleid::regrole, member::regrole) FROM pg_auth_members
) f(item)
"""

# (name, SQL) tried by every group. {txn}, {at}, {partition}, ... come from
# the payment made before the catalogue starts.
ATTACKS = [
    # Escalation through functions the definers call, or that run as owners.
    (
        "create a function the definers would find",
        "CREATE FUNCTION payments.pii_key_version() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ),
    (
        "create a function in public",
        "CREATE FUNCTION public.pgp_sym_encrypt(text, text, text) RETURNS bytea LANGUAGE sql AS 'SELECT NULL::bytea'",
    ),
    (
        "alter a definer to run as the caller",
        "ALTER FUNCTION payments.refund(bigint, timestamptz, bigint, text, text, text) SECURITY INVOKER",
    ),
    (
        "take ownership of a function",
        "ALTER FUNCTION payments.authorize(bigint, text, bigint, bigint, bigint, "
        "character, inet, text, numeric, text, text[], text) OWNER TO CURRENT_USER",
    ),
    ("take ownership of a table", "ALTER TABLE payments.transaction OWNER TO CURRENT_USER"),
    ("take ownership of the schema", "ALTER SCHEMA payments OWNER TO CURRENT_USER"),
    ("become the owner", "SET ROLE payments_owner"),
    ("become the key owner", "SET ROLE pii_keyholder"),
    ("become the superuser", "SET SESSION AUTHORIZATION postgres"),
    ("join the owner", "GRANT payments_owner TO CURRENT_USER"),
    ("join the key owner", "GRANT pii_keyholder TO CURRENT_USER"),
    ("read a key file", "SELECT pg_read_file('/etc/postgresql/pgops-pii/pii-key-1')"),
    ("read a key through the key function", "SELECT payments.pii_key(1)"),
    ("encrypt under a chosen key", "SELECT payments.pii_encrypt('x')"),
    ("run a program", "COPY payments.merchant (name) FROM PROGRAM 'id'"),
    ("import a file", "SELECT lo_import('/etc/passwd')"),
    ("replication role", "SET session_replication_role = replica"),
    # Moving money or rewriting the rules outside the payment functions.
    (
        "status change with the old session switch",
        "SET payments.status_change = 'on'; UPDATE payments.transaction SET status = 'succeeded' WHERE id = {txn}",
    ),
    ("new status transition", "INSERT INTO payments.transaction_status_transition VALUES ('refunded', 'succeeded')"),
    ("delete a status transition", "DELETE FROM payments.transaction_status_transition"),
    ("change a currency", "UPDATE payments.currency SET minor_unit = 0 WHERE code = 'EUR'"),
    (
        "insert a succeeded transaction with a duplicate id",
        "INSERT INTO payments.transaction (id, created_at, "
        "merchant_id, customer_id, payment_method_id, amount, currency, status, device_type) VALUES ({txn}, "
        "now() + interval '1 day', {merchant}, {customer}, {method}, 100, 'EUR', 'succeeded', 'mobile')",
    ),
    (
        "insert into a transaction partition",
        "INSERT INTO {partition} (merchant_id, customer_id, payment_method_id, "
        "amount, currency, status, device_type, created_at) VALUES ({merchant}, {customer}, {method}, 100, 'EUR', "
        "'pending', 'mobile', '{at}')",
    ),
    (
        "far-dated row into the default partition",
        "INSERT INTO payments.transaction (merchant_id, customer_id, "
        "payment_method_id, amount, currency, status, device_type, created_at) VALUES ({merchant}, {customer}, "
        "{method}, 100, 'EUR', 'pending', 'mobile', now() + interval '30 years')",
    ),
    ("delete an idempotency key", "DELETE FROM payments.idempotency_key WHERE merchant_id = {merchant}"),
    ("delete an idempotency key in its partition", "DELETE FROM {key_partition}"),
    ("take the sequence's next id", "SELECT nextval('payments.transaction_id_seq')"),
    ("overwrite a password hash", "UPDATE payments.customer SET password_hash = password_hash WHERE id = {customer}"),
    (
        "insert a customer with a chosen hash",
        "INSERT INTO payments.customer (username, password_hash, email, "
        "full_name_enc, full_name_key_version) VALUES ('evil', '$2a$10$abcdefghijklmnopqrstuv', 'e@x.test', "
        "'\\x00', 1)",
    ),
    ("overwrite a card token", "UPDATE payments.customer_payment_method SET token = token WHERE id = {method}"),
    ("overwrite the encrypted name", "UPDATE payments.customer SET full_name_enc = '\\x00' WHERE id = {customer}"),
    ("read password hashes", "SELECT password_hash FROM payments.customer"),
    # Forging or erasing the audit trail.
    ("change a status directly", "SELECT payments.change_transaction_status({txn}, '{at}', 'refunded', 'x', 'y')"),
    (
        "write an audit row",
        "INSERT INTO payments.transaction_state_change (transaction_id, transaction_created_at, "
        "to_status, reason, changed_by) VALUES ({txn}, '{at}', 'refunded', 'forged', 'alice.ops')",
    ),
    (
        "write an audit row in its partition",
        "INSERT INTO {audit_partition} (transaction_id, transaction_created_at, "
        "to_status, reason, changed_by) VALUES ({txn}, '{at}', 'refunded', 'forged', 'alice.ops')",
    ),
    ("rewrite an audit row", "UPDATE payments.transaction_state_change SET reason = 'x' WHERE transaction_id = {txn}"),
    ("rewrite an audit row in its partition", "UPDATE {audit_partition} SET reason = 'x'"),
    (
        "insert a refund",
        "INSERT INTO payments.refund (transaction_id, transaction_created_at, amount, reason, "
        "created_by) VALUES ({txn}, '{at}', 1, 'forged', 'alice.ops')",
    ),
    ("truncate the audit trail", "TRUNCATE payments.transaction_state_change"),
    ("truncate an audit partition", "TRUNCATE {audit_partition}"),
    ("truncate a refund partition", "TRUNCATE {refund_partition}"),
    ("disable the transaction guard", "ALTER TABLE payments.transaction DISABLE TRIGGER transaction_guard"),
    ("disable the guard on a partition", "ALTER TABLE {partition} DISABLE TRIGGER transaction_guard"),
    (
        "drop the append-only trigger",
        "DROP TRIGGER transaction_state_change_append_only ON payments.transaction_state_change",
    ),
    ("detach an audit partition", "ALTER TABLE payments.transaction_state_change DETACH PARTITION {audit_partition}"),
    ("drop an audit partition", "DROP TABLE {audit_partition}"),
    (
        "add a trigger",
        "CREATE TRIGGER evil BEFORE INSERT ON payments.refund FOR EACH ROW EXECUTE FUNCTION payments.tg_append_only()",
    ),
    ("disable the event triggers", "ALTER EVENT TRIGGER pgops_protect_end DISABLE"),
    ("grant a write to oneself", "GRANT UPDATE ON pgops.config TO CURRENT_USER"),
    ("change the trusted settings", "UPDATE pgops.config SET value = '2' WHERE name = 'pii_key_version'"),
    ("permit protected DDL", "SELECT pgops.permit_protected_ddl('I would like to detach a partition')"),
    ("reconcile access", "SELECT pgops.reconcile_access('{{}}'::jsonb)"),
]


@pytest.fixture(scope="module")
def ca(host, tmp_path_factory):
    return fetch_ca(host, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def login(host, ca):
    def open_as(role, dbname="payments", autocommit=True):
        return connect(host_address(host), role, ca, dbname=dbname, autocommit=autocommit)

    return open_as


@pytest.fixture(scope="module")
def target(host, login):
    """A captured, partly refunded payment (through the API, as the
    application) the attacks aim at; its partitions by name."""
    with login(USERS["payments_app"]) as conn:
        payer = create_payer(conn, "target", "target password 123", "Tanguy Target")
        txn, at, status, _ = conn.execute(
            "SELECT * FROM payments.authorize(%s, %s, %s, %s, 5000::bigint, 'EUR', '192.0.2.9'::inet, 'desktop', "
            "0.1::numeric, 'model-1')",
            (payer["merchant"], f"target-{secrets.token_hex(4)}", payer["customer"], payer["method"]),
        ).fetchone()
        assert status == "authorized"
        conn.execute("SELECT payments.capture(%s, %s, %s, 'checkout')", (txn, at, f"cap-{txn}"))
        refund_key = f"refund-{txn}"
        refund_id = conn.execute(
            "SELECT payments.refund(%s, %s, 1000, 'customer request', %s, 'alice.ops')", (txn, at, refund_key)
        ).fetchone()[0]

    def partition(table, where):
        return psql(host, f"SELECT tableoid::regclass FROM payments.{table} WHERE {where} LIMIT 1", db="payments")

    return {
        "txn": txn,
        "at": at.isoformat(),
        "merchant": payer["merchant"],
        "customer": payer["customer"],
        "method": payer["method"],
        "refund_key": refund_key,
        "refund_id": refund_id,
        "partition": partition("transaction", f"id = {txn}"),
        "audit_partition": partition("transaction_state_change", f"transaction_id = {txn}"),
        "refund_partition": partition("refund", f"transaction_id = {txn}"),
        "key_partition": partition("idempotency_key", f"transaction_id = {txn}"),
    }


@pytest.fixture(scope="module")
def before(host, target):
    """The fingerprint once the target payment exists, before any attack."""
    return psql(host, FINGERPRINT, db="payments")


@pytest.mark.parametrize("group", sorted(USERS))
@pytest.mark.parametrize(("name", "sql"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused(login, target, before, group, name, sql):
    with login(USERS[group]) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(sql.format(**target))


@pytest.mark.parametrize("group", sorted(USERS))
def test_no_function_can_be_replaced(host, login, before, group):
    """CREATE OR REPLACE of every function of the schema, as it stands (the
    body does not matter: only its owner may replace it)."""
    definitions = psql(
        host,
        "SELECT string_agg(pg_get_functiondef(p.oid), E'\\n;;\\n') FROM pg_proc p "
        "WHERE p.pronamespace = 'payments'::regnamespace",
        db="payments",
    ).split("\n;;\n")
    assert len(definitions) >= 15
    with login(USERS[group]) as conn:
        for definition in definitions:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(definition)


def test_a_plain_login_cannot_even_connect(login):
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        login(PLAIN)
    with login(PLAIN, dbname="postgres") as conn:
        for sql in (
            "SET ROLE payments_owner",
            "SELECT pg_read_file('/etc/postgresql/pgops-pii/pii-key-1')",
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "SELECT lo_import('/etc/passwd')",
            "SET session_replication_role = replica",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql)


def test_session_settings_do_not_change_what_the_functions_do(login, target):
    """Every pgops.* and payments.* setting the functions once read, set by
    the caller, then each payment call: the key version, the key directory
    and the bcrypt cost come from pgops.config, and no guard switches off.
    (The customer it creates is rolled back.)"""
    settings = {
        "pgops.pii_key_version": "99",
        "pgops.pii_key_dir": "/tmp",
        "pgops.bcrypt_cost": "4",
        "pgops.protected_snapshot": "[]",
        "payments.status_change": "on",
    }

    def with_settings(conn):
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        return conn

    with with_settings(login(USERS["payments_app"], autocommit=False)) as conn:
        suffix = secrets.token_hex(4)
        customer = conn.execute(
            "SELECT payments.create_customer(%s, 'settings password 1', %s, 'Sam Settings')",
            (f"settings_{suffix}", f"settings_{suffix}@example.test"),
        ).fetchone()[0]
        version, matches, clear = conn.execute(
            "SELECT c.full_name_key_version, payments.check_customer_password(c.username, 'settings password 1'), "
            "payments.pii_decrypt(c.full_name_enc, c.full_name_key_version) FROM payments.customer c WHERE c.id = %s",
            (customer,),
        ).fetchone()
        assert (version, matches, clear) == (1, True, "Sam Settings")
        conn.rollback()
    with with_settings(login(USERS["payments_app"])) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("UPDATE payments.transaction SET status = 'refunded' WHERE id = %s", (target["txn"],))
    with with_settings(login(USERS["admin"])) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE payments.refund DETACH PARTITION {refund_partition}".format(**target))


def test_a_shadowing_search_path_changes_nothing(login, target):
    """admin may create its own schemas; functions named like the built-ins
    the payment functions call are never reached (search_path is pinned).
    One transaction, rolled back."""
    schema = f"adm_{secrets.token_hex(3)}"
    with login(USERS["admin"], autocommit=False) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for signature in ("sha256(bytea)", "hashtextextended(text, bigint)", "concat_ws(text, variadic text[])"):
            conn.execute(
                f"CREATE FUNCTION {schema}.{signature} RETURNS bytea LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'shadow reached'; END $$"
            )
        conn.execute(f"SET LOCAL search_path = {schema}, pg_catalog, public")
        status = conn.execute(
            "SELECT status FROM payments.authorize(%s, %s, %s, %s, 700::bigint, 'EUR', '192.0.2.9'::inet, "
            "'desktop', 0.1::numeric, 'model-1')",
            (target["merchant"], f"shadow-{secrets.token_hex(4)}", target["customer"], target["method"]),
        ).fetchone()[0]
        assert status == "authorized"
        conn.rollback()


def test_retried_refund_replays_and_changed_authorize_is_refused(login, target, before):
    with login(USERS["payments_app"]) as conn:
        again = conn.execute(
            "SELECT payments.refund(%s, %s, 1000, 'customer request', %s, 'alice.ops')",
            (target["txn"], target["at"], target["refund_key"]),
        ).fetchone()[0]
        assert again == target["refund_id"]
        with pytest.raises(psycopg.DatabaseError, match="already used for a different request") as refused:
            conn.execute(
                "SELECT payments.refund(%s, %s, 2000, 'customer request', %s, 'alice.ops')",
                (target["txn"], target["at"], target["refund_key"]),
            )
        assert refused.value.sqlstate == "PX409"
        key = conn.execute(
            "SELECT idempotency_key FROM payments.idempotency_key WHERE transaction_id = %s AND operation = "
            "'authorize'",
            (target["txn"],),
        ).fetchone()[0]
        with pytest.raises(psycopg.DatabaseError, match="already used for a different request") as refused:
            conn.execute(
                "SELECT * FROM payments.authorize(%s, %s, %s, %s, 9999::bigint, 'EUR', '192.0.2.9'::inet, 'desktop',"
                " 0.1::numeric, 'model-1')",
                (target["merchant"], key, target["customer"], target["method"]),
            )
        assert refused.value.sqlstate == "PX409"


def test_the_audit_trail_names_the_login_not_the_caller(host, target):
    """A refund "by alice.ops" is recorded as made by the application's login,
    on behalf of alice.ops."""
    row = psql(
        host,
        f"SELECT created_by || ' ' || on_behalf_of FROM payments.refund WHERE id = {target['refund_id']}",
        db="payments",
    )
    assert row == "m_app alice.ops"


def test_the_database_is_unchanged_by_the_attacks(host, before):
    """Last in the file: every table row, function, trigger, ACL and
    membership is as it was before the first attack (the shadow schema is
    gone, the replayed refund added nothing)."""
    assert psql(host, FINGERPRINT, db="payments") == before

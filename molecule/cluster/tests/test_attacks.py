"""The attack catalogue: every way a login of each group might escalate,
move money outside the payment functions, or forge or erase the audit trail,
tried as a real login user of that group over TLS. Each attempt is refused
with SQLSTATE 42501 (insufficient privilege) or the documented error, and
the database is exactly as it was afterwards: every row of the payments and
pgops tables, every function definition, owner, ACL, membership and trigger
state (the last test compares fingerprints taken before and after)."""

import secrets
import time

import psycopg
import pytest
from conftest import PLAIN, USERS
from psycopg import errors

from pgops.faults import wait_until
from pgops.testing import connect, create_payer, fetch_ca, host_address, load_project_module, psql, psql_fails

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
            "payments.customer_full_name(c.id) FROM payments.customer c WHERE c.id = %s",
            (customer,),
        ).fetchone()
        assert (version, matches, clear) == (1, True, "Sam Settings")
        conn.rollback()
    with with_settings(login(USERS["payments_app"])) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("UPDATE payments.transaction SET status = 'refunded' WHERE id = %s", (target["txn"],))
    with with_settings(login(USERS["admin"])) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE payments.refund DETACH PARTITION {refund_partition}".format(**target))


def test_a_shadowing_search_path_changes_nothing(host, login, target):
    """A schema of admin's (planted by the superuser: no login may create
    one) holds functions named like the built-ins the payment functions
    call; they are never reached (search_path is pinned). One transaction,
    rolled back; the schema is dropped afterwards."""
    schema = f"adm_{secrets.token_hex(3)}"
    psql(host, f"CREATE SCHEMA {schema} AUTHORIZATION admin", db="payments")
    try:
        with login(USERS["admin"], autocommit=False) as conn:
            conn.execute("SET ROLE admin")
            for signature in ("sha256(bytea)", "hashtextextended(text, bigint)", "concat_ws(text, variadic text[])"):
                conn.execute(
                    f"CREATE FUNCTION {schema}.{signature} RETURNS bytea LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'shadow reached'; END $$"
                )
            conn.execute("RESET ROLE")
            conn.execute(f"SET LOCAL search_path = {schema}, pg_catalog, public")
            status = conn.execute(
                "SELECT payments.capture(%s, %s, %s, 'shadow')", (target["txn"], target["at"], f"cap-{target['txn']}")
            ).fetchone()[0]
            assert status == "succeeded"  # the first capture's answer, replayed through the shadowed path
            conn.rollback()
    finally:
        psql(host, f"DROP SCHEMA {schema} CASCADE", db="payments")


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


# The second ring (issue 28): (name, SQL, SQLSTATE, groups that may run it
# and are refused otherwise, with the state they refuse it in), tried by
# every group over TLS on the direct path and through PgBouncer.
POOLER_PORT = 6432
MIGRATION_LOCK = 0x7067_6F70_735F_6D67  # roles/schema/library/pgops_migrate.py
RING2 = [
    # Code planted where a privileged session looks.
    ("a schema named after the superuser", "CREATE SCHEMA postgres", "42501", {}),
    ("a schema named after the owner", "CREATE SCHEMA payments_owner", "42501", {}),
    ("a schema named after oneself", "CREATE SCHEMA AUTHORIZATION CURRENT_USER", "42501", {}),
    ("an operator that beats pg_catalog's",
     "CREATE OPERATOR public.<> (LEFTARG = regrole, RIGHTARG = regrole, FUNCTION = pg_catalog.oidne)", "42501", {}),
    ("an operator in the payments schema",
     "CREATE OPERATOR payments.<> (LEFTARG = regrole, RIGHTARG = regrole, FUNCTION = pg_catalog.oidne)", "42501", {}),
    ("a temporary function named like pgcrypto's",
     "CREATE FUNCTION pg_temp.crypt(text, text) RETURNS text LANGUAGE sql AS 'SELECT $1'", "42501", {}),
    ("a temporary table named like a payments table",
     "CREATE TEMPORARY TABLE transaction_status_transition (from_status text, to_status text)", "42501", {}),
    # The state machine: a payment in the wrong status (the target is captured and partly refunded).
    ("capture a captured payment with a new key", "SELECT payments.capture({txn}, '{at}', 'again-{nonce}', 'x')",
     "42501", {"payments_app": "PX412", "admin": "PX412"}),
    ("cancel a captured payment", "SELECT payments.cancel({txn}, '{at}', 'too late', 'cancel-{nonce}', 'x')",
     "42501", {"payments_app": "PX412", "admin": "PX412"}),
    # Grants as documented: only the application authorizes.
    ("authorize a payment as a person",
     "SELECT * FROM payments.authorize({merchant}, 'auth-{nonce}', {customer}, {method}, 100::bigint, 'EUR', "
     "'192.0.2.9'::inet, 'desktop', 0.1::numeric, 'model-1')", "42501", {"payments_app": None}),
    # PII by need.
    ("read every e-mail", "SELECT email FROM payments.customer", "42501", {"payments_app": None}),
    ("read every client address", "SELECT client_ip FROM payments.transaction", "42501", {"payments_app": None}),
    ("read client addresses in a partition", "SELECT client_ip FROM {partition}", "42501", {"payments_app": None}),
    ("read a whole customer row", "SELECT * FROM payments.customer", "42501", {}),
    ("rewrite an e-mail (account recovery)",
     "UPDATE payments.customer SET email = 'attacker@example.test' WHERE id = {customer}", "42501", {}),
    ("decrypt with the bulk function",
     "SELECT payments.pii_decrypt(full_name_enc, full_name_key_version) FROM payments.customer", "42501", {}),
    ("decrypt every customer's name in one statement",
     "SELECT payments.customer_full_name(g) FROM generate_series(1, 50) g", "42501",
     {"payments_app": "PX429", "pii_reader": "PX429"}),
    # Starving the cluster.
    ("take the migration runner's lock", f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})", "42501", {}),
    ("take pg_partman's lock", "SELECT pg_try_advisory_xact_lock(hashtext('pg_partman run_maintenance'))", "42501",
     {}),
    ("take a shared advisory lock", "SELECT pg_advisory_lock_shared(1)", "42501", {}),
    ("lock a table every payment checks", "LOCK TABLE payments.merchant IN ACCESS EXCLUSIVE MODE NOWAIT", "42501", {}),
    ("block key checks on merchants", "LOCK TABLE payments.merchant IN EXCLUSIVE MODE NOWAIT", "42501", {}),
    ("lock the IP networks authorize reads", "LOCK TABLE payments.ip_network IN ACCESS EXCLUSIVE MODE NOWAIT",
     "42501", {}),
    ("lock the currencies", "LOCK TABLE payments.currency IN SHARE ROW EXCLUSIVE MODE NOWAIT", "42501", {}),
    ("a large object", "SELECT lo_from_bytea(0, '\\x00')", "42501", {}),
    ("an empty large object", "SELECT lo_create(0)", "42501", {}),
    ("lift the temporary file limit", "SET temp_file_limit = -1", "42501", {}),
    ("lift one's connection limit", "ALTER ROLE CURRENT_USER CONNECTION LIMIT -1", "42501", {}),
    # (Their role's name is visible to anyone; their backend type is not.)
    ("end the WAL senders", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'replicator'",
     "42501", {}),
]  # fmt: skip


@pytest.fixture(scope="module")
def open_path(host, ca):
    """A login over TLS to the leader: directly (5432) or through its
    PgBouncer (6432, transaction pooling; no server-side prepare)."""

    def open_as(role, path):
        port = POOLER_PORT if path == "pooled" else 5432
        return connect(
            host_address(host), role, ca, dbname="payments", autocommit=True, port=port, prepare_threshold=None
        )

    return open_as


@pytest.mark.parametrize("path", ["direct", "pooled"])
@pytest.mark.parametrize("group", sorted(USERS))
def test_second_ring_attacks_are_refused(open_path, target, before, path, group):
    """Every attack of the second ring, as this group, on one connection
    (each in a transaction of its own, rolled back): its SQLSTATE, or, for
    the group that may, success. Every deviation is listed."""
    wrong = []
    with open_path(USERS[group], path) as conn:
        for name, sql, sqlstate, allowed in RING2:
            want = allowed.get(group, sqlstate)
            statement = sql.format(nonce=secrets.token_hex(4), **target)
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute(statement)
                got = None
            except psycopg.Error as e:
                got = e.sqlstate
            if got != want:
                wrong.append(f"{name}: {got or 'no error'}, not {want or 'success'}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("path", ["direct", "pooled"])
def test_a_capture_replayed_with_its_key_still_answers(open_path, target, path):
    """The same capture retried with its own key gets its first answer, even
    though the payment is refunded in part now; a new key gets PX412."""
    with open_path(USERS["payments_app"], path) as conn:
        again = conn.execute(
            "SELECT payments.capture(%s, %s, %s, 'retry')", (target["txn"], target["at"], f"cap-{target['txn']}")
        ).fetchone()[0]
        assert again == "succeeded"
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(
                "SELECT payments.capture(%s, %s, %s, 'retry')", (target["txn"], target["at"], secrets.token_hex(8))
            )
        assert refused.value.sqlstate == "PX412" and "is partially_refunded" in str(refused.value)


def test_decryption_is_one_customer_at_a_time(open_path, target):
    """The name of the customer being served, ten customers in a transaction
    at most: the eleventh is refused (PX429), and the refusal is logged."""
    with open_path(USERS["payments_app"], "direct") as conn:
        with conn.transaction():
            assert conn.execute("SELECT payments.customer_full_name(%s)", (target["customer"],)).fetchone()[0] == (
                "Tanguy Target"
            )
            for other in range(-9, 0):
                conn.execute("SELECT payments.customer_full_name(%s)", (other,))
            with pytest.raises(psycopg.Error) as refused, conn.transaction():
                conn.execute("SELECT payments.customer_full_name(-11)")
        assert refused.value.sqlstate == "PX429"


def test_no_definer_or_trigger_function_has_an_unpinned_search_path(host):
    """In every database: a SECURITY DEFINER or trigger function without a
    pinned search_path (no "$user", pg_temp last) runs what its caller's
    path finds first. (Functions in C, pgaudit's event triggers, resolve no
    name through it.)"""
    for db in psql(host, "SELECT datname FROM pg_database WHERE datallowconn").splitlines():
        loose = psql(
            host,
            "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND (p.prosecdef OR p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)) "
            "AND p.prolang NOT IN (SELECT oid FROM pg_language WHERE lanname IN ('c', 'internal')) "
            "AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%' "
            "AND c NOT LIKE '%$user%' AND c LIKE '%pg_temp')",
            db=db,
        )
        assert loose == "", f"{db}: {loose}"
    # The privileged roles' own sessions: no "$user" schema first.
    pinned = psql(
        host,
        "SELECT string_agg(r.rolname || '=' || c, ',' ORDER BY r.rolname) FROM pg_db_role_setting s "
        "JOIN pg_roles r ON r.oid = s.setrole CROSS JOIN LATERAL unnest(s.setconfig) c "
        "WHERE s.setdatabase = 0 AND c LIKE 'search_path=%'",
    )
    assert pinned == ",".join(
        f"{r}=search_path=public, pg_temp" for r in ("payments_owner", "pii_keyholder", "postgres")
    )


OWNER_DDL = [
    "DROP FUNCTION payments.tg_append_only() CASCADE",
    "CREATE OR REPLACE FUNCTION payments.tg_append_only() RETURNS trigger LANGUAGE plpgsql "
    "SET search_path = pg_catalog, pg_temp AS 'BEGIN RETURN NEW; END'",
    "ALTER FUNCTION payments.tg_transaction_guard() RESET search_path",
    "ALTER FUNCTION payments.capture(bigint, timestamptz, text, text) SECURITY INVOKER",
    "ALTER FUNCTION payments.refund(bigint, timestamptz, bigint, text, text, text) SET search_path = public",
    "DROP FUNCTION payments.require_status(bigint, text, text, text[])",
    "CREATE FUNCTION payments.backdoor() RETURNS int LANGUAGE sql SET search_path = pg_catalog, pg_temp AS 'SELECT 1'",
    "DROP SCHEMA payments CASCADE",
]


@pytest.mark.parametrize("role", ["payments_owner", "postgres"])
@pytest.mark.parametrize("ddl", OWNER_DDL)
def test_owner_level_ddl_on_the_protected_functions_needs_the_permit(host, before, role, ddl):
    """As the owner (the superuser taking its role) and as the superuser:
    refused without a permit by the event triggers. (Rolled back, should
    the refusal ever be missing: the test fails, the schema stays.)"""
    error = psql_fails(host, f"BEGIN; SET LOCAL ROLE {role}; {ddl}; ROLLBACK", db="payments")
    assert "refused:" in error and "permit" in error, error


def test_a_login_cannot_open_more_sessions_than_its_limit(host, ca):
    """m_plain's limit is 2 (access_login_default): the third session is
    refused (53300), on the direct path."""

    def plain():
        return connect(host_address(host), PLAIN, ca, dbname="postgres")

    first, second = plain(), plain()
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            plain()
    finally:
        first.close()
        second.close()


def test_a_session_that_lifts_its_timeouts_is_ended(host, ca):
    """m_plain's own limits are 10 s (molecule.yml): a session that sets
    them to 0, then sleeps, or idles in a transaction, is ended by the
    session guard (every 15 s, 5 s of grace), on the direct path."""
    address = host_address(host)
    active = connect(address, PLAIN, ca, dbname="postgres", autocommit=True)
    idle = connect(address, PLAIN, ca, dbname="postgres")
    started = time.monotonic()
    try:
        active.execute("SET pgops.statement_limit = 0")
        idle.execute("SET idle_in_transaction_session_timeout = 0")
        idle.execute("SELECT 1")  # a transaction is open, and idles
        with pytest.raises(psycopg.OperationalError):
            active.execute("SELECT pg_sleep(90)")
        ended_after = time.monotonic() - started
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
    finally:
        active.close()
        idle.close()
    assert 10 < ended_after < 45, ended_after
    reasons = wait_until(lambda: logged(host, "pgops session guard: ended session .* of m_plain"), 10, "the reasons")
    assert any("active for" in r for r in reasons) and any("idle in a transaction" in r for r in reasons)


def test_login_limits_and_settings_are_in_place(host):
    """Every login user has a connection limit, the limits leave room, and
    each carries its group's timeouts; the superuser's DDL in the database
    gives up on a lock after 5 s."""
    rows = dict(
        line.split("|", 1)
        for line in psql(
            host,
            "SELECT r.rolname, r.rolconnlimit || ' ' || coalesce(array_to_string(s.setconfig, ' '), '') "
            "FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 "
            "WHERE r.rolname LIKE 'm\\_%' ORDER BY 1",
        ).splitlines()
    )
    assert rows["m_app"].startswith("40 ") and "pgops.statement_limit=30s" in rows["m_app"]
    # No statement_timeout for writers: one that cancels a COMMIT waiting for the synchronous standbys
    # would leave it acknowledged on the leader alone.
    assert "statement_timeout" not in rows["m_app"]
    assert rows["m_reader"].startswith("5 ") and "temp_file_limit=0" in rows["m_reader"]
    assert rows["m_plain"].startswith("2 ")
    assert all(int(v.split()[0]) > 0 for v in rows.values())
    unlimited = psql(
        host, "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolcanlogin AND rolconnlimit < 0 "
        "AND (shobj_description(oid, 'pg_authid') = 'pgops access_users' "
        "OR rolname IN ('pgbouncer_auth', 'pgops_exporter'))"
    )  # fmt: skip
    assert unlimited == ""
    assert psql(host, "SHOW lock_timeout", db="payments") == "5s"


def test_a_forged_client_address_comes_after_the_real_one(host, open_path):
    """log_line_prefix puts the client's address first: an application_name
    that spells another address lands after it, and the security report's
    parser reads the real one."""
    tag = secrets.token_hex(4)
    with open_path(USERS["readonlyuser"], "direct") as conn:
        conn.execute("SET application_name = 'psql,client=203.0.113.66 user=postgres,db=payments,app=x'")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"SELECT 'forgery-{tag}'::int")
    line = wait_until(lambda: logged(host, f"ERROR: .*forgery-{tag}"), 10, "the refused statement in the log")[0]
    real = line.split(" client=", 1)[1].split(" ", 1)[0]
    assert real not in ("203.0.113.66", "") and line.index(f"client={real} ") < line.index("203.0.113.66")
    parsed = load_project_module("roles/security_audit/library/pgops_security_audit.py").parse_line(line)
    assert (parsed["client"], parsed["user"]) == (real, "m_reader"), parsed


def logged(host, pattern):
    """The server log's lines that match a grep pattern."""
    logs = psql(
        host,
        "SELECT CASE WHEN current_setting('log_directory') LIKE '/%' THEN current_setting('log_directory') "
        "ELSE current_setting('data_directory') || '/' || current_setting('log_directory') END",
    )
    return host.run(f"grep -rh '{pattern}' {logs}").stdout.splitlines()


def test_the_database_is_unchanged_by_the_attacks(host, before):
    """Last in the file: every table row, function, trigger, ACL and
    membership is as it was before the first attack (the shadow schema is
    gone, the replayed refund added nothing)."""
    assert psql(host, FINGERPRINT, db="payments") == before

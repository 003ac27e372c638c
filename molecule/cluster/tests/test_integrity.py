"""Every constraint rejects the bad input it exists for, with a clear error,
through a real client connection."""

import threading
import time

import psycopg
import pytest
from psycopg import errors

from pgops.testing import psql_fails

OWNER = "SET ROLE payments_owner; "


def status_of(db, txn_id, created_at):
    return (
        db()
        .execute("SELECT status FROM payments.transaction WHERE id = %s AND created_at = %s", (txn_id, created_at))
        .fetchone()[0]
    )


def audit_rows(db, txn_id):
    return (
        db()
        .execute(
            "SELECT from_status, to_status, reason, on_behalf_of FROM payments.transaction_state_change "
            "WHERE transaction_id = %s ORDER BY id",
            (txn_id,),
        )
        .fetchall()
    )


def test_iso_4217_is_complete_with_minor_units(db):
    conn = db()
    assert conn.execute("SELECT count(*) FROM payments.currency").fetchone()[0] >= 170
    units = dict(
        conn.execute(
            "SELECT code, minor_unit FROM payments.currency WHERE code IN ('USD', 'EUR', 'JPY', 'KWD', 'CLF', 'XAU')"
        ).fetchall()
    )
    assert units == {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "CLF": 4, "XAU": None}


def test_a_payment_is_authorized_captured_and_audited(db, authorize, tester):
    txn_id, created_at, status, replayed = authorize(amount=2599)
    assert (status, replayed) == ("authorized", False)
    db().execute("SELECT payments.capture(%s, %s, 'capture-2599', 'checkout')", (txn_id, created_at))
    assert status_of(db, txn_id, created_at) == "succeeded"
    assert audit_rows(db, txn_id) == [
        (None, "pending", "payment received", "api"),
        ("pending", "authorized", "fraud decision: approve", "api"),
        ("authorized", "succeeded", "captured", "checkout"),
    ]
    # Who did it is the server's record of the login, whatever the caller said.
    who = db().execute(
        "SELECT array_agg(DISTINCT changed_by) FROM payments.transaction_state_change WHERE transaction_id = %s",
        (txn_id,),
    )
    assert who.fetchone()[0] == [tester.name]


def test_a_high_anomaly_score_declines_and_records_the_assessment(db, authorize):
    txn_id, created_at, status, _ = authorize(score=0.95)
    assert status == "failed"
    row = (
        db()
        .execute(
            "SELECT a.anomaly_score, a.decision, array_agg(i.indicator) FROM payments.fraud_assessment a "
            "JOIN payments.fraud_assessment_indicator i USING (transaction_created_at) "
            "WHERE a.transaction_id = %s AND i.assessment_id = a.id GROUP BY 1, 2",
            (txn_id,),
        )
        .fetchone()
    )
    assert (float(row[0]), row[1], row[2]) == (0.95, "decline", ["new_device"])


@pytest.mark.parametrize("amount", [0, -500])
def test_zero_or_negative_amount_is_refused(authorize, amount):
    with pytest.raises(errors.CheckViolation, match="transaction_amount_check"):
        authorize(amount=amount)


def test_unknown_currency_is_refused(authorize):
    with pytest.raises(errors.ForeignKeyViolation, match="currency"):
        authorize(currency="ZZZ")


def test_currency_without_minor_unit_cannot_carry_a_payment(authorize):
    with pytest.raises(errors.CheckViolation, match="XAU has no minor unit"):
        authorize(currency="XAU")


def test_unknown_status_is_refused(host, db, authorize):
    txn_id, created_at, _, _ = authorize()
    error = psql_fails(
        host, f"{OWNER}SELECT payments.change_transaction_status({txn_id}, '{created_at}', 'bogus', 'x', 'test')",
        db="payments",
    )  # fmt: skip
    assert "illegal status transition authorized -> bogus" in error
    with pytest.raises(errors.ForeignKeyViolation, match="transaction_status"):
        db().execute("INSERT INTO payments.transaction_status_transition VALUES ('pending', 'bogus')")


def test_illegal_transition_is_refused_even_for_the_owner(host, db, captured, refund):
    txn_id, created_at = captured(amount=500)
    refund(txn_id, created_at, 500)
    assert status_of(db, txn_id, created_at) == "refunded"
    error = psql_fails(
        host, f"{OWNER}SELECT payments.change_transaction_status({txn_id}, '{created_at}', 'succeeded', 'oops', 'x')",
        db="payments",
    )  # fmt: skip
    assert "illegal status transition refunded -> succeeded" in error
    assert status_of(db, txn_id, created_at) == "refunded"


def test_status_cannot_be_updated_directly_and_facts_are_immutable(db, authorize):
    txn_id, created_at, _, _ = authorize()
    # The harness may UPDATE the table, but only the owner's functions change a status ...
    with pytest.raises(errors.InsufficientPrivilege, match="status changes go through the payment functions"):
        db().execute("UPDATE payments.transaction SET status = 'succeeded' WHERE id = %s", (txn_id,))
    # ... whatever session settings say.
    conn = db()
    conn.execute("SET payments.status_change = 'on'")
    with pytest.raises(errors.InsufficientPrivilege, match="status changes go through the payment functions"):
        conn.execute("UPDATE payments.transaction SET status = 'succeeded' WHERE id = %s", (txn_id,))
    with pytest.raises(errors.CheckViolation, match="only the status of a transaction can change"):
        db().execute("UPDATE payments.transaction SET amount = 1 WHERE id = %s", (txn_id,))
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        db().execute("DELETE FROM payments.transaction WHERE id = %s", (txn_id,))


def test_a_retried_request_does_not_charge_twice(db, authorize):
    first = authorize(key="order-42-attempt")
    again = authorize(key="order-42-attempt")
    assert again[:3] == first[:3] and (first[3], again[3]) == (False, True)
    count = (
        db()
        .execute(
            "SELECT count(*) FROM payments.idempotency_key k JOIN payments.transaction t "
            "ON t.id = k.transaction_id AND t.created_at = k.transaction_created_at WHERE k.idempotency_key = %s",
            ("order-42-attempt",),
        )
        .fetchone()[0]
    )
    assert count == 1


def test_an_idempotency_key_reused_for_another_request_is_refused(db, authorize, captured, refund):
    authorize(key="order-43", amount=1000)
    with pytest.raises(psycopg.DatabaseError, match="already used for a different request") as refused:
        authorize(key="order-43", amount=2000)
    assert refused.value.sqlstate == "PX409"
    # Keys are per merchant across operations: an authorize key is not a refund key.
    txn_id, created_at = captured(amount=800)
    with pytest.raises(psycopg.DatabaseError, match="already used for a different request") as refused:
        refund(txn_id, created_at, 100, key="order-43")
    assert refused.value.sqlstate == "PX409"


def test_concurrent_duplicate_requests_create_one_transaction(db, authorize):
    results = []

    def worker():
        results.append(authorize(key="order-44-race", conn=db()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert len({r[0] for r in results}) == 1
    assert sorted(r[3] for r in results) == [False, True, True, True]


@pytest.mark.parametrize("operation", ["UPDATE {t} SET reason = 'rewritten'", "DELETE FROM {t}", "TRUNCATE {t}"])
def test_audit_trail_is_append_only(db, authorize, operation):
    authorize()
    with pytest.raises(errors.InsufficientPrivilege, match="transaction_state_change is append-only"):
        db().execute(operation.format(t="payments.transaction_state_change"))


@pytest.mark.parametrize("table", ["refund", "fraud_assessment", "fraud_assessment_indicator"])
def test_financial_records_are_append_only(db, table):
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        db().execute(f"DELETE FROM payments.{table}")


def test_status_change_rolls_back_entirely_when_the_audit_insert_fails(db, authorize):
    txn_id, created_at, _, _ = authorize()
    before = audit_rows(db, txn_id)
    with pytest.raises(errors.NotNullViolation, match="reason"):
        db().execute(
            "SELECT payments.change_transaction_status(%s, %s, 'succeeded', NULL, 'test')", (txn_id, created_at)
        )
    assert status_of(db, txn_id, created_at) == "authorized"
    assert audit_rows(db, txn_id) == before


def test_partial_refunds_add_up_and_cannot_exceed_the_amount(db, captured, refund):
    txn_id, created_at = captured(amount=1000)
    refund(txn_id, created_at, 300, "partial")
    assert status_of(db, txn_id, created_at) == "partially_refunded"
    with pytest.raises(errors.CheckViolation, match="would exceed"):
        refund(txn_id, created_at, 701, "too much")
    refund(txn_id, created_at, 700, "rest")
    assert status_of(db, txn_id, created_at) == "refunded"


def test_a_retried_refund_refunds_once(db, captured, refund):
    txn_id, created_at = captured(amount=1000)
    first = refund(txn_id, created_at, 400, key="refund-once")
    assert refund(txn_id, created_at, 400, key="refund-once") == first
    total = db().execute("SELECT sum(amount), count(*) FROM payments.refund WHERE transaction_id = %s", (txn_id,))
    assert total.fetchone() == (400, 1)
    with pytest.raises(psycopg.DatabaseError, match="already used for a different request") as refused:
        refund(txn_id, created_at, 500, key="refund-once")
    assert refused.value.sqlstate == "PX409"


def test_a_retried_capture_replays_its_answer(db, authorize):
    txn_id, created_at, _, _ = authorize()
    capture = "SELECT payments.capture(%s, %s, 'capture-once', 'checkout')"
    assert db().execute(capture, (txn_id, created_at)).fetchone()[0] == "succeeded"
    assert db().execute(capture, (txn_id, created_at)).fetchone()[0] == "succeeded"
    assert [r[1] for r in audit_rows(db, txn_id)].count("succeeded") == 1


def test_concurrent_refunds_cannot_over_refund(db, captured, refund):
    txn_id, created_at = captured(amount=1000)
    first = db(autocommit=False)
    refund(txn_id, created_at, 600, "first", conn=first)
    outcome = {}

    def second_refund():
        try:
            refund(txn_id, created_at, 600, "second")
            outcome["result"] = "refunded"
        except psycopg.Error as exc:
            outcome["result"] = exc

    thread = threading.Thread(target=second_refund)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), "the second refund must wait for the first one's lock"
    first.commit()
    thread.join(30)
    assert isinstance(outcome["result"], errors.CheckViolation)
    total = db().execute("SELECT sum(amount) FROM payments.refund WHERE transaction_id = %s", (txn_id,)).fetchone()[0]
    assert total == 600


def test_card_numbers_cannot_be_stored_as_tokens(db, payer):
    with pytest.raises(errors.CheckViolation, match="token"):
        db().execute(
            "INSERT INTO payments.customer_payment_method (customer_id, method_type, token) "
            "VALUES (%s, 'card', '4242 4242 4242 4242')",
            (payer["customer"],),
        )


def test_passwords_are_bcrypt_and_names_encrypted(db, payer):
    conn = db()
    pw_hash, name_enc, version = conn.execute(
        "SELECT password_hash, full_name_enc, full_name_key_version FROM payments.customer WHERE id = %s",
        (payer["customer"],),
    ).fetchone()
    assert pw_hash.startswith("$2a$10$")
    assert b"Jeanne" not in bytes(name_enc)
    assert conn.execute("SELECT payments.pii_decrypt(%s, %s)", (name_enc, version)).fetchone()[0] == "Jeanne Testeuse"
    username = conn.execute("SELECT username FROM payments.customer WHERE id = %s", (payer["customer"],)).fetchone()[0]
    check = "SELECT payments.check_customer_password(%s, %s)"
    assert conn.execute(check, (username, "correct horse battery staple")).fetchone()[0] is True
    assert conn.execute(check, (username, "wrong horse battery staple")).fetchone()[0] is False


def test_the_most_specific_network_gives_the_location(db, authorize):
    conn = db()
    wide = conn.execute(
        "INSERT INTO payments.geo_location (country_code, city) VALUES ('FR', 'Paris') RETURNING id"
    ).fetchone()[0]
    narrow = conn.execute(
        "INSERT INTO payments.geo_location (country_code, city) VALUES ('FR', 'Lyon') RETURNING id"
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO payments.ip_network VALUES ('203.0.113.0/24', %s), ('203.0.113.0/28', %s)", (wide, narrow)
    )
    txn_id, created_at, _, _ = authorize(ip="203.0.113.5")
    other_id, other_created, _, _ = authorize(ip="203.0.113.200")
    locations = dict(
        conn.execute(
            "SELECT id, location_id FROM payments.transaction WHERE id IN (%s, %s)", (txn_id, other_id)
        ).fetchall()
    )
    assert locations == {txn_id: narrow, other_id: wide}

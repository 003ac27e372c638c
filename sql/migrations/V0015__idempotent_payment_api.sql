-- Everything that moves money is idempotent, and the application writes
-- only through these functions (the access role grants no INSERT, UPDATE or
-- DELETE on transactions, keys, the audit trail, reference data or
-- credentials).
--
-- Idempotency keys: one per merchant, across operations (an authorize key
-- reused for a refund is a conflict). The first answer is stored with the
-- key and replayed on retry; a retry with another body gets SQLSTATE PX409.
-- A request claims its key with one INSERT ... ON CONFLICT DO NOTHING that
-- already holds the answer (ids are drawn before the work), so a concurrent
-- duplicate waits on the unique key and then replays; the foreign key to the
-- transaction is checked at commit, when the transaction row exists.
-- The keys stay in a plain table: uniqueness must hold across all time the
-- key is kept, and a unique index on a partitioned table holds only within a
-- partition. pgops.expire_idempotency_keys deletes keys older than the
-- retention in batches (the schema role's daily timer); the index on
-- created_at and the foreign key's index come in V0016, built concurrently.
--
-- Every change here is a catalog change or takes its locks briefly: new
-- nullable columns or columns with a constant default, a NOT VALID foreign
-- key (validated in V0016 without blocking writes).
ALTER TABLE payments.idempotency_key
    ADD COLUMN operation text NOT NULL DEFAULT 'authorize'
        CHECK (operation IN ('authorize', 'capture', 'cancel', 'refund')),
    ADD COLUMN response jsonb;
COMMENT ON COLUMN payments.idempotency_key.response IS
    'The first answer, replayed on retry (NULL for keys from before V0015: rebuilt from the audit trail)';
ALTER TABLE payments.idempotency_key
    DROP CONSTRAINT idempotency_key_transaction_id_transaction_created_at_fkey;
ALTER TABLE payments.idempotency_key
    ADD CONSTRAINT idempotency_key_transaction_fkey FOREIGN KEY (transaction_id, transaction_created_at)
        REFERENCES payments.transaction (id, created_at) ON DELETE RESTRICT DEFERRABLE INITIALLY DEFERRED NOT VALID;

-- A key that was already claimed: its stored answer when the request is the
-- same (a retry), PX409 when it is another request.
CREATE FUNCTION payments.idempotency_replay(p_merchant_id bigint, p_key text, p_operation text, p_fingerprint bytea)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key record;
BEGIN
    SELECT k.operation, k.request_fingerprint, k.response, k.transaction_id, k.transaction_created_at
      INTO v_key FROM payments.idempotency_key k
     WHERE k.merchant_id = p_merchant_id AND k.idempotency_key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key % of merchant % vanished during the request', p_key, p_merchant_id
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_key.operation <> p_operation OR v_key.request_fingerprint <> p_fingerprint THEN
        RAISE EXCEPTION 'idempotency key % of merchant % was already used for a different request (%)',
            p_key, p_merchant_id, v_key.operation
            USING ERRCODE = 'PX409',
                  HINT = 'Retry with the same request to get the first answer, or use a new key for a new request.';
    END IF;
    IF v_key.response IS NULL THEN
        -- A key from before V0015: its authorization's first answer is the
        -- status that followed 'pending' in the audit trail.
        RETURN jsonb_build_object(
            'transaction_id', v_key.transaction_id, 'created_at', v_key.transaction_created_at,
            'status', (SELECT c.to_status FROM payments.transaction_state_change c
                        WHERE c.transaction_id = v_key.transaction_id
                          AND c.transaction_created_at = v_key.transaction_created_at AND c.from_status = 'pending'
                        ORDER BY c.id LIMIT 1));
    END IF;
    RETURN v_key.response;
END
$$;

-- Keys older than the retention, in batches that commit (the superuser's
-- daily job; a procedure with transaction control cannot have a SET
-- clause, so every name is qualified).
CREATE PROCEDURE pgops.expire_idempotency_keys(p_keep interval, p_batch integer DEFAULT 5000,
                                               INOUT deleted bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    v_done integer;
BEGIN
    IF p_keep IS NULL OR p_keep < interval '1 day' OR p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'keep idempotency keys one day at least, in batches of one key at least'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    deleted := 0;
    LOOP
        DELETE FROM payments.idempotency_key k
         WHERE k.ctid = ANY (ARRAY(SELECT o.ctid FROM payments.idempotency_key o
                                    WHERE o.created_at < pg_catalog.now() - p_keep LIMIT p_batch));
        GET DIAGNOSTICS v_done = ROW_COUNT;
        deleted := deleted + v_done;
        COMMIT;
        EXIT WHEN v_done < p_batch;
    END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE pgops.expire_idempotency_keys(interval, integer, bigint) FROM PUBLIC;

-- Authorize: the same signature as before; p_requested_by is now recorded as
-- on_behalf_of, and the audit trail names the session user.
CREATE OR REPLACE FUNCTION payments.authorize(
    p_merchant_id       bigint,
    p_idempotency_key   text,
    p_customer_id       bigint,
    p_payment_method_id bigint,
    p_amount            bigint,
    p_currency          char(3),
    p_client_ip         inet,
    p_device_type       text,
    p_anomaly_score     numeric,
    p_model_version     text,
    p_indicators        text[] DEFAULT '{}',
    p_requested_by      text DEFAULT 'api'
) RETURNS TABLE (transaction_id bigint, created_at timestamptz, status text, replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- The fingerprint of V0008 (operation implied), so keys issued before
    -- the upgrade replay as before.
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', p_customer_id, p_payment_method_id, p_amount,
                                                       p_currency), 'UTF8'));
    v_replay      jsonb;
    v_id          bigint := nextval('payments.transaction_id_seq');
    v_created     timestamptz := now();
    v_location    bigint;
    v_decision    text := CASE WHEN p_anomaly_score >= 0.9 THEN 'decline'
                               WHEN p_anomaly_score >= 0.7 THEN 'review'
                               ELSE 'approve' END;
    v_status      text;
    v_assessment  bigint;
BEGIN
    v_status := CASE v_decision WHEN 'decline' THEN 'failed' ELSE 'authorized' END;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (p_merchant_id, p_idempotency_key, 'authorize', v_fingerprint, v_id, v_created,
            jsonb_build_object('transaction_id', v_id, 'created_at', v_created, 'status', v_status))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        -- A retry (or a concurrent duplicate, which waited for the first to commit).
        v_replay := payments.idempotency_replay(p_merchant_id, p_idempotency_key, 'authorize', v_fingerprint);
        RETURN QUERY SELECT (v_replay ->> 'transaction_id')::bigint, (v_replay ->> 'created_at')::timestamptz,
                            v_replay ->> 'status', true;
        RETURN;
    END IF;

    SELECT n.location_id INTO v_location FROM payments.ip_network n
     WHERE n.network >>= p_client_ip ORDER BY masklen(n.network) DESC LIMIT 1;

    INSERT INTO payments.transaction (id, created_at, merchant_id, customer_id, payment_method_id, amount, currency,
                                      status, client_ip, location_id, device_type)
    VALUES (v_id, v_created, p_merchant_id, p_customer_id, p_payment_method_id, p_amount, p_currency, 'pending',
            p_client_ip, v_location, p_device_type);
    INSERT INTO payments.transaction_state_change
           (transaction_id, transaction_created_at, from_status, to_status, reason, changed_by, on_behalf_of)
    VALUES (v_id, v_created, NULL, 'pending', 'payment received', session_user, p_requested_by);

    INSERT INTO payments.fraud_assessment (transaction_id, transaction_created_at, model_version,
                                           anomaly_score, decision)
    VALUES (v_id, v_created, p_model_version, p_anomaly_score, v_decision)
    RETURNING id INTO v_assessment;
    INSERT INTO payments.fraud_assessment_indicator (assessment_id, transaction_created_at, indicator)
    SELECT DISTINCT v_assessment, v_created, i FROM unnest(p_indicators) AS i;

    PERFORM payments.change_transaction_status(v_id, v_created, v_status, 'fraud decision: ' || v_decision,
                                               p_requested_by);
    RETURN QUERY SELECT v_id, v_created, v_status, false;
END
$$;

-- Capture and cancel: one status change each, idempotent. The key's
-- namespace is the transaction's merchant; times in fingerprints are UTC
-- epochs (a retry from a session in another time zone is the same request).
DROP FUNCTION payments.capture(bigint, timestamptz, text);
CREATE FUNCTION payments.capture(p_transaction_id bigint, p_created_at timestamptz, p_idempotency_key text,
                                 p_on_behalf_of text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_merchant    bigint;
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', 'capture', p_transaction_id,
                                                       extract(epoch FROM p_created_at)), 'UTF8'));
BEGIN
    SELECT t.merchant_id INTO v_merchant FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (v_merchant, p_idempotency_key, 'capture', v_fingerprint, p_transaction_id, p_created_at,
            '{"status": "succeeded"}')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN payments.idempotency_replay(v_merchant, p_idempotency_key, 'capture', v_fingerprint) ->> 'status';
    END IF;
    PERFORM payments.change_transaction_status(p_transaction_id, p_created_at, 'succeeded', 'captured',
                                               p_on_behalf_of);
    RETURN 'succeeded';
END
$$;

CREATE FUNCTION payments.cancel(p_transaction_id bigint, p_created_at timestamptz, p_reason text,
                                p_idempotency_key text, p_on_behalf_of text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_merchant    bigint;
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', 'cancel', p_transaction_id,
                                                       extract(epoch FROM p_created_at), p_reason), 'UTF8'));
BEGIN
    IF p_reason IS NULL OR length(p_reason) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'a reason of 1 to 500 characters is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.merchant_id INTO v_merchant FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (v_merchant, p_idempotency_key, 'cancel', v_fingerprint, p_transaction_id, p_created_at,
            '{"status": "canceled"}')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN payments.idempotency_replay(v_merchant, p_idempotency_key, 'cancel', v_fingerprint) ->> 'status';
    END IF;
    PERFORM payments.change_transaction_status(p_transaction_id, p_created_at, 'canceled', p_reason, p_on_behalf_of);
    RETURN 'canceled';
END
$$;

-- Refund part or all of a captured payment, once per idempotency key. The
-- transaction row is locked first, so concurrent refunds of one payment run
-- one after the other and their sum never exceeds the captured amount; the
-- refund's id is drawn before its key is claimed, so the key holds the answer.
DROP FUNCTION payments.refund(bigint, timestamptz, bigint, text, text);
CREATE FUNCTION payments.refund(
    p_transaction_id  bigint,
    p_created_at      timestamptz,
    p_amount          bigint,
    p_reason          text,
    p_idempotency_key text,
    p_on_behalf_of    text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', 'refund', p_transaction_id,
                                                       extract(epoch FROM p_created_at), p_amount, p_reason), 'UTF8'));
    v_txn         record;
    v_refunded    bigint;
    v_id          bigint;
    v_status      text;
BEGIN
    IF p_reason IS NULL OR length(p_reason) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'a reason of 1 to 500 characters is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.merchant_id, t.amount, t.status INTO v_txn FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT coalesce(sum(r.amount), 0) INTO v_refunded FROM payments.refund r
     WHERE r.transaction_id = p_transaction_id AND r.transaction_created_at = p_created_at;
    v_id := nextval('payments.refund_id_seq');
    v_status := CASE WHEN v_refunded + p_amount = v_txn.amount THEN 'refunded' ELSE 'partially_refunded' END;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (v_txn.merchant_id, p_idempotency_key, 'refund', v_fingerprint, p_transaction_id, p_created_at,
            jsonb_build_object('refund_id', v_id, 'status', v_status))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN (payments.idempotency_replay(v_txn.merchant_id, p_idempotency_key, 'refund', v_fingerprint)
                ->> 'refund_id')::bigint;
    END IF;
    IF v_txn.status NOT IN ('succeeded', 'partially_refunded') THEN
        RAISE EXCEPTION 'transaction % is %: only captured payments can be refunded', p_transaction_id, v_txn.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF v_refunded + p_amount > v_txn.amount THEN
        RAISE EXCEPTION 'refund of % would exceed transaction %: % of % already refunded',
            p_amount, p_transaction_id, v_refunded, v_txn.amount USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO payments.refund (id, transaction_id, transaction_created_at, amount, reason, created_by,
                                 on_behalf_of)
    OVERRIDING SYSTEM VALUE
    VALUES (v_id, p_transaction_id, p_created_at, p_amount, p_reason, session_user, p_on_behalf_of);
    PERFORM payments.change_transaction_status(p_transaction_id, p_created_at, v_status, p_reason, p_on_behalf_of);
    RETURN v_id;
END
$$;

-- Customers and their credentials: created and changed only here.
CREATE OR REPLACE FUNCTION payments.create_customer(p_username text, p_password text, p_email text,
                                                   p_full_name text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cost integer := coalesce((SELECT c.value::integer FROM pgops.config c WHERE c.name = 'bcrypt_cost'), 12);
    v_pii  record;
    v_id   bigint;
BEGIN
    IF p_password IS NULL OR length(p_password) < 12 THEN
        RAISE EXCEPTION 'password too short (12 characters at least)' USING ERRCODE = 'check_violation';
    END IF;
    IF p_full_name IS NULL OR length(p_full_name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'a full name of 1 to 200 characters is required' USING ERRCODE = 'check_violation';
    END IF;
    v_pii := payments.pii_encrypt(p_full_name);
    INSERT INTO payments.customer (username, password_hash, email, full_name_enc, full_name_key_version)
    VALUES (p_username, public.crypt(p_password, public.gen_salt('bf', greatest(v_cost, 10))), p_email,
            v_pii.ciphertext, v_pii.key_version)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION payments.check_customer_password(p_username text, p_password text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT password_hash = public.crypt(p_password, password_hash)
                       FROM payments.customer WHERE username = p_username), false)
$$;

CREATE FUNCTION payments.change_customer_password(p_customer_id bigint, p_current_password text,
                                                  p_new_password text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cost integer := coalesce((SELECT c.value::integer FROM pgops.config c WHERE c.name = 'bcrypt_cost'), 12);
    v_hash text;
BEGIN
    SELECT c.password_hash INTO v_hash FROM payments.customer c WHERE c.id = p_customer_id FOR UPDATE;
    IF NOT FOUND OR v_hash IS DISTINCT FROM public.crypt(p_current_password, v_hash) THEN
        RAISE EXCEPTION 'customer % : current password does not match', p_customer_id USING ERRCODE = 'invalid_password';
    END IF;
    IF p_new_password IS NULL OR length(p_new_password) < 12 THEN
        RAISE EXCEPTION 'password too short (12 characters at least)' USING ERRCODE = 'check_violation';
    END IF;
    UPDATE payments.customer SET password_hash = public.crypt(p_new_password, public.gen_salt('bf', greatest(v_cost, 10)))
     WHERE id = p_customer_id;
END
$$;

-- Payment methods: the token (a credential at the PSP) is written here only.
CREATE FUNCTION payments.add_payment_method(p_customer_id bigint, p_method_type text, p_token text,
                                            p_display_hint text DEFAULT NULL, p_expires_on date DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO payments.customer_payment_method (customer_id, method_type, token, display_hint, expires_on)
    VALUES (p_customer_id, p_method_type, p_token, p_display_hint, p_expires_on)
    RETURNING id
$$;

REVOKE ALL ON FUNCTION payments.idempotency_replay(bigint, text, text, bytea),
    payments.capture(bigint, timestamptz, text, text), payments.cancel(bigint, timestamptz, text, text, text),
    payments.refund(bigint, timestamptz, bigint, text, text, text),
    payments.change_customer_password(bigint, text, text),
    payments.add_payment_method(bigint, text, text, text, date) FROM PUBLIC;

-- Integrity enforced by the database, and the payment path as functions.

-- Financial records are never rewritten or deleted: refunds, fraud
-- assessments and the status audit trail are append-only, and transactions
-- are never deleted. This holds for every role, the application's included.
CREATE FUNCTION payments.tg_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Name the partitioned table, not the partition the row happens to be in.
    RAISE EXCEPTION '% is append-only: % is not allowed',
        coalesce(pg_partition_root(TG_RELID), TG_RELID)::regclass, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Transactions: created in an initial status, immutable afterwards except for
-- their status, which changes only through change_transaction_status() and
-- only along payments.transaction_status_transition.
CREATE FUNCTION payments.tg_transaction_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM payments.transaction_status WHERE code = NEW.status AND is_initial) THEN
            RAISE EXCEPTION 'a transaction cannot be created in status %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        -- An unknown code is left to the foreign key, which names it as such.
        IF EXISTS (SELECT 1 FROM payments.currency WHERE code = NEW.currency AND minor_unit IS NULL) THEN
            RAISE EXCEPTION 'currency % has no minor unit and cannot carry a payment', NEW.currency
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.created_at, NEW.merchant_id, NEW.customer_id, NEW.payment_method_id, NEW.amount,
        NEW.currency, NEW.client_ip, NEW.location_id, NEW.device_type)
       IS DISTINCT FROM
       (OLD.id, OLD.created_at, OLD.merchant_id, OLD.customer_id, OLD.payment_method_id, OLD.amount,
        OLD.currency, OLD.client_ip, OLD.location_id, OLD.device_type) THEN
        RAISE EXCEPTION 'transaction %: only the status of a transaction can change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF current_setting('payments.status_change', true) IS DISTINCT FROM 'on' THEN
        IF NEW.status IS DISTINCT FROM OLD.status THEN
            RAISE EXCEPTION 'transaction %: status changes go through payments.change_transaction_status()', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payments.transaction_status_transition
                    WHERE from_status = OLD.status AND to_status = NEW.status) THEN
        RAISE EXCEPTION 'transaction %: illegal status transition % -> %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transaction_guard BEFORE INSERT OR UPDATE ON payments.transaction
    FOR EACH ROW EXECUTE FUNCTION payments.tg_transaction_guard();
CREATE TRIGGER transaction_no_delete BEFORE DELETE ON payments.transaction
    FOR EACH ROW EXECUTE FUNCTION payments.tg_append_only();
CREATE TRIGGER transaction_no_truncate BEFORE TRUNCATE ON payments.transaction
    FOR EACH STATEMENT EXECUTE FUNCTION payments.tg_append_only();

DO $$
DECLARE
    v_table text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['transaction_state_change', 'refund', 'fraud_assessment',
                                   'fraud_assessment_indicator']
    LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON payments.%I
                            FOR EACH ROW EXECUTE FUNCTION payments.tg_append_only()',
                       v_table || '_append_only', v_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON payments.%I
                            FOR EACH STATEMENT EXECUTE FUNCTION payments.tg_append_only()',
                       v_table || '_no_truncate', v_table);
    END LOOP;
END
$$;

-- The one way to change a status: lock the transaction, change it, write the
-- audit row. One function call = one statement: if the audit insert fails,
-- the status change is rolled back with it.
CREATE FUNCTION payments.change_transaction_status(
    p_transaction_id bigint,
    p_created_at     timestamptz,
    p_to_status      text,
    p_reason         text,
    p_changed_by     text
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_from text;
BEGIN
    SELECT status INTO v_from FROM payments.transaction
     WHERE id = p_transaction_id AND created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM set_config('payments.status_change', 'on', true);
    UPDATE payments.transaction SET status = p_to_status, updated_at = clock_timestamp()
     WHERE id = p_transaction_id AND created_at = p_created_at;
    PERFORM set_config('payments.status_change', 'off', true);
    INSERT INTO payments.transaction_state_change
           (transaction_id, transaction_created_at, from_status, to_status, reason, changed_by)
    VALUES (p_transaction_id, p_created_at, v_from, p_to_status, p_reason, p_changed_by);
    RETURN v_from;
END
$$;

-- PII: pgcrypto symmetric encryption with versioned keys. The keys are files
-- on the database hosts (directory pgops.pii_key_dir, owner-only), read by the
-- server itself: they never travel in SQL text, statements or logs. Only these
-- SECURITY DEFINER functions, owned by the superuser, read them.
CREATE FUNCTION payments.pii_key(p_version integer) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_dir text := current_setting('pgops.pii_key_dir', true);
BEGIN
    IF v_dir IS NULL OR v_dir = '' THEN
        RAISE EXCEPTION 'no PII key directory configured (pgops.pii_key_dir)' USING ERRCODE = 'config_file_error';
    END IF;
    RETURN btrim(pg_read_file(format('%s/pii-key-%s', v_dir, p_version)), E' \n\r\t');
END
$$;
REVOKE ALL ON FUNCTION payments.pii_key(integer) FROM PUBLIC;

CREATE FUNCTION payments.pii_key_version() RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('pgops.pii_key_version', true), '')::integer
$$;

CREATE FUNCTION payments.pii_encrypt(p_plaintext text, OUT ciphertext bytea, OUT key_version integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    key_version := payments.pii_key_version();
    IF key_version IS NULL THEN
        RAISE EXCEPTION 'no current PII key version configured (pgops.pii_key_version)'
            USING ERRCODE = 'config_file_error';
    END IF;
    ciphertext := pgp_sym_encrypt(p_plaintext, payments.pii_key(key_version), 'cipher-algo=aes256');
END
$$;
REVOKE ALL ON FUNCTION payments.pii_encrypt(text) FROM PUBLIC;

CREATE FUNCTION payments.pii_decrypt(p_ciphertext bytea, p_key_version integer) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT pgp_sym_decrypt(p_ciphertext, payments.pii_key(p_key_version))
$$;
REVOKE ALL ON FUNCTION payments.pii_decrypt(bytea, integer) FROM PUBLIC;

-- Customers: password hashed with bcrypt (cost pgops.bcrypt_cost, at least
-- 10), full name encrypted. Plaintext arrives as parameters only.
CREATE FUNCTION payments.create_customer(p_username text, p_password text, p_email text, p_full_name text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_cost integer := greatest(10, coalesce(nullif(current_setting('pgops.bcrypt_cost', true), '')::integer, 12));
    v_pii  record;
    v_id   bigint;
BEGIN
    IF length(p_password) < 12 THEN
        RAISE EXCEPTION 'password too short (12 characters at least)' USING ERRCODE = 'check_violation';
    END IF;
    v_pii := payments.pii_encrypt(p_full_name);
    INSERT INTO payments.customer (username, password_hash, email, full_name_enc, full_name_key_version)
    VALUES (p_username, crypt(p_password, gen_salt('bf', v_cost)), p_email, v_pii.ciphertext, v_pii.key_version)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

CREATE FUNCTION payments.check_customer_password(p_username text, p_password text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce((SELECT password_hash = crypt(p_password, password_hash)
                       FROM payments.customer WHERE username = p_username), false)
$$;

-- Authorize a payment: idempotent per (merchant, idempotency key), resolves
-- the client IP's location, records the fraud assessment and decides.
CREATE FUNCTION payments.authorize(
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
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', p_customer_id, p_payment_method_id, p_amount,
                                                       p_currency), 'UTF8'));
    v_key         payments.idempotency_key;
    v_id          bigint;
    v_created     timestamptz;
    v_location    bigint;
    v_decision    text;
    v_assessment  bigint;
BEGIN
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, request_fingerprint)
    VALUES (p_merchant_id, p_idempotency_key, v_fingerprint)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        -- A retry (or a concurrent duplicate, which waited for the first to commit).
        SELECT * INTO v_key FROM payments.idempotency_key k
         WHERE k.merchant_id = p_merchant_id AND k.idempotency_key = p_idempotency_key;
        IF v_key.request_fingerprint <> v_fingerprint THEN
            RAISE EXCEPTION 'idempotency key % of merchant % was already used for a different request',
                p_idempotency_key, p_merchant_id USING ERRCODE = 'unique_violation';
        END IF;
        RETURN QUERY SELECT t.id, t.created_at, t.status, true FROM payments.transaction t
                      WHERE t.id = v_key.transaction_id AND t.created_at = v_key.transaction_created_at;
        RETURN;
    END IF;

    SELECT n.location_id INTO v_location FROM payments.ip_network n
     WHERE n.network >>= p_client_ip ORDER BY masklen(n.network) DESC LIMIT 1;

    INSERT INTO payments.transaction (merchant_id, customer_id, payment_method_id, amount, currency, status,
                                      client_ip, location_id, device_type)
    VALUES (p_merchant_id, p_customer_id, p_payment_method_id, p_amount, p_currency, 'pending',
            p_client_ip, v_location, p_device_type)
    RETURNING id, transaction.created_at INTO v_id, v_created;
    INSERT INTO payments.transaction_state_change
           (transaction_id, transaction_created_at, from_status, to_status, reason, changed_by)
    VALUES (v_id, v_created, NULL, 'pending', 'payment received', p_requested_by);

    v_decision := CASE WHEN p_anomaly_score >= 0.9 THEN 'decline'
                       WHEN p_anomaly_score >= 0.7 THEN 'review'
                       ELSE 'approve' END;
    INSERT INTO payments.fraud_assessment (transaction_id, transaction_created_at, model_version,
                                           anomaly_score, decision)
    VALUES (v_id, v_created, p_model_version, p_anomaly_score, v_decision)
    RETURNING id INTO v_assessment;
    INSERT INTO payments.fraud_assessment_indicator (assessment_id, transaction_created_at, indicator)
    SELECT DISTINCT v_assessment, v_created, i FROM unnest(p_indicators) AS i;

    PERFORM payments.change_transaction_status(
        v_id, v_created, CASE v_decision WHEN 'decline' THEN 'failed' ELSE 'authorized' END,
        'fraud decision: ' || v_decision, p_requested_by);

    UPDATE payments.idempotency_key k SET transaction_id = v_id, transaction_created_at = v_created
     WHERE k.merchant_id = p_merchant_id AND k.idempotency_key = p_idempotency_key;

    RETURN QUERY SELECT v_id, v_created, t.status, false FROM payments.transaction t
                  WHERE t.id = v_id AND t.created_at = v_created;
END
$$;

CREATE FUNCTION payments.capture(p_transaction_id bigint, p_created_at timestamptz, p_requested_by text DEFAULT 'api')
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT payments.change_transaction_status(p_transaction_id, p_created_at, 'succeeded', 'captured', p_requested_by);
$$;

-- Refund part or all of a captured payment. The transaction row is locked
-- first, so concurrent refunds of one payment run one after the other and
-- their sum can never exceed the captured amount.
CREATE FUNCTION payments.refund(
    p_transaction_id bigint,
    p_created_at     timestamptz,
    p_amount         bigint,
    p_reason         text,
    p_requested_by   text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_txn      record;
    v_refunded bigint;
    v_id       bigint;
BEGIN
    SELECT t.amount, t.status INTO v_txn FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_txn.status NOT IN ('succeeded', 'partially_refunded') THEN
        RAISE EXCEPTION 'transaction % is %: only captured payments can be refunded', p_transaction_id, v_txn.status
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(r.amount), 0) INTO v_refunded FROM payments.refund r
     WHERE r.transaction_id = p_transaction_id AND r.transaction_created_at = p_created_at;
    IF v_refunded + p_amount > v_txn.amount THEN
        RAISE EXCEPTION 'refund of % would exceed transaction %: % of % already refunded',
            p_amount, p_transaction_id, v_refunded, v_txn.amount USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO payments.refund (transaction_id, transaction_created_at, amount, reason, created_by)
    VALUES (p_transaction_id, p_created_at, p_amount, p_reason, p_requested_by)
    RETURNING id INTO v_id;
    PERFORM payments.change_transaction_status(
        p_transaction_id, p_created_at,
        CASE WHEN v_refunded + p_amount = v_txn.amount THEN 'refunded' ELSE 'partially_refunded' END,
        p_reason, p_requested_by);
    RETURN v_id;
END
$$;

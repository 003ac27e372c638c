-- The second ring of least privilege (docs/schema.md, docs/security.md).
--
-- 1. Trigger functions pin their search_path like every definer function
--    does, so nothing a caller's session resolves reaches them.
-- 2. The state machine is total: every status write is checked against the
--    transition table (the same status included), and the payment functions
--    refuse a payment whose status does not accept the call with SQLSTATE
--    PX412, after a replay of the same idempotency key has had its answer.
-- 3. PII by need: an audited e-mail change, masked views for people, a
--    name decrypted one customer at a time (PX429 past a bound per
--    transaction).
-- 4. Owner-level DDL on the schema's functions (CREATE OR REPLACE, ALTER,
--    DROP ... CASCADE) needs the permit, like DDL on protected tables.
-- 5. The access reconciler takes the rest from its configuration: database
--    privileges, built-in role memberships, login limits and settings, the
--    privileged roles' pinned search_path, built-in functions no login may
--    call (advisory locks, large objects).
--
-- Only functions, views, event triggers and one new table: no lock on a hot
-- table beyond the catalog's.

-- 1 and 2. The guard: every UPDATE is a status change by the owner's
-- functions along a listed transition.
CREATE OR REPLACE FUNCTION payments.tg_transaction_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM payments.transaction_status WHERE code = NEW.status AND is_initial) THEN
            RAISE EXCEPTION 'a transaction cannot be created in status %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
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
    IF current_user::regrole <> (SELECT c.relowner::regrole FROM pg_class c
                                  WHERE c.oid = coalesce(pg_partition_root(TG_RELID), TG_RELID)) THEN
        RAISE EXCEPTION 'transaction %: status changes go through the payment functions', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payments.transaction_status_transition
                    WHERE from_status = OLD.status AND to_status = NEW.status) THEN
        RAISE EXCEPTION 'transaction %: illegal status transition % -> %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

ALTER FUNCTION payments.tg_append_only() SET search_path = pg_catalog, pg_temp;

-- The refusal every payment function gives a payment in the wrong status.
CREATE FUNCTION payments.require_status(p_transaction_id bigint, p_status text, p_operation text,
                                        p_accepted text[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT p_status = ANY (p_accepted) THEN
        RAISE EXCEPTION 'transaction % is %: % accepts only a payment that is %', p_transaction_id, p_status,
            p_operation, array_to_string(p_accepted, ' or ')
            USING ERRCODE = 'PX412', DETAIL = format('status=%s operation=%s', p_status, p_operation),
                  HINT = 'Read the payment''s status; a retry of the same request with its idempotency key '
                         'returns the first answer.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION payments.require_status(bigint, text, text, text[]) FROM PUBLIC;

-- Capture and cancel lock the payment first (a concurrent capture and
-- cancel run one after the other), claim the key (a retry replays), then
-- require an authorized payment.
CREATE OR REPLACE FUNCTION payments.capture(p_transaction_id bigint, p_created_at timestamptz,
                                            p_idempotency_key text, p_on_behalf_of text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_txn         record;
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', 'capture', p_transaction_id,
                                                       extract(epoch FROM p_created_at)), 'UTF8'));
BEGIN
    SELECT t.merchant_id, t.status INTO v_txn FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (v_txn.merchant_id, p_idempotency_key, 'capture', v_fingerprint, p_transaction_id, p_created_at,
            '{"status": "succeeded"}')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN payments.idempotency_replay(v_txn.merchant_id, p_idempotency_key, 'capture', v_fingerprint)
               ->> 'status';
    END IF;
    PERFORM payments.require_status(p_transaction_id, v_txn.status, 'capture', ARRAY['authorized']);
    PERFORM payments.change_transaction_status(p_transaction_id, p_created_at, 'succeeded', 'captured',
                                               p_on_behalf_of);
    RETURN 'succeeded';
END
$$;

CREATE OR REPLACE FUNCTION payments.cancel(p_transaction_id bigint, p_created_at timestamptz, p_reason text,
                                           p_idempotency_key text, p_on_behalf_of text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_txn         record;
    v_fingerprint bytea := sha256(convert_to(concat_ws('|', 'cancel', p_transaction_id,
                                                       extract(epoch FROM p_created_at), p_reason), 'UTF8'));
BEGIN
    IF p_reason IS NULL OR length(p_reason) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'a reason of 1 to 500 characters is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.merchant_id, t.status INTO v_txn FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO payments.idempotency_key (merchant_id, idempotency_key, operation, request_fingerprint,
                                          transaction_id, transaction_created_at, response)
    VALUES (v_txn.merchant_id, p_idempotency_key, 'cancel', v_fingerprint, p_transaction_id, p_created_at,
            '{"status": "canceled"}')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN payments.idempotency_replay(v_txn.merchant_id, p_idempotency_key, 'cancel', v_fingerprint)
               ->> 'status';
    END IF;
    PERFORM payments.require_status(p_transaction_id, v_txn.status, 'cancel', ARRAY['authorized']);
    PERFORM payments.change_transaction_status(p_transaction_id, p_created_at, 'canceled', p_reason, p_on_behalf_of);
    RETURN 'canceled';
END
$$;

CREATE OR REPLACE FUNCTION payments.refund(
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
    PERFORM payments.require_status(p_transaction_id, v_txn.status, 'refund',
                                    ARRAY['succeeded', 'partially_refunded']);
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'a refund is of a positive amount' USING ERRCODE = 'check_violation';
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

-- 3. PII by need.
-- A customer's e-mail is how their account is recovered: it changes only
-- here, with who (the login, recorded by the server), for whom and why, in
-- an append-only record that holds masked addresses only.
CREATE FUNCTION payments.mask_email(p_email text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT left(split_part(p_email, '@', 1), 1) || '***@' || split_part(p_email, '@', 2)
$$;

CREATE FUNCTION payments.mask_ip(p_ip inet) RETURNS cidr
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT network(set_masklen(p_ip, CASE family(p_ip) WHEN 4 THEN 24 ELSE 48 END))::cidr
$$;

CREATE TABLE payments.customer_email_change (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint      NOT NULL REFERENCES payments.customer ON DELETE RESTRICT,
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by   text        NOT NULL,
    on_behalf_of text        NOT NULL CHECK (length(on_behalf_of) BETWEEN 1 AND 200),
    reason       text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    old_masked   text        NOT NULL,
    new_masked   text        NOT NULL
);
COMMENT ON TABLE payments.customer_email_change IS
    'Every change of a customer''s e-mail: who (session_user), for whom, why; masked addresses only';
CREATE TRIGGER customer_email_change_append_only BEFORE UPDATE OR DELETE ON payments.customer_email_change
    FOR EACH ROW EXECUTE FUNCTION payments.tg_append_only();
CREATE TRIGGER customer_email_change_no_truncate BEFORE TRUNCATE ON payments.customer_email_change
    FOR EACH STATEMENT EXECUTE FUNCTION payments.tg_append_only();
INSERT INTO pgops.protected_table (parent) VALUES ('payments.customer_email_change');

CREATE FUNCTION payments.change_customer_email(p_customer_id bigint, p_new_email text, p_reason text,
                                               p_on_behalf_of text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old text;
BEGIN
    IF p_reason IS NULL OR length(p_reason) NOT BETWEEN 1 AND 500
       OR p_on_behalf_of IS NULL OR length(p_on_behalf_of) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'an e-mail change needs a reason (1 to 500 characters) and who it is for (1 to 200)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.email INTO v_old FROM payments.customer c WHERE c.id = p_customer_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'customer % does not exist', p_customer_id USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE payments.customer SET email = p_new_email WHERE id = p_customer_id;
    INSERT INTO payments.customer_email_change (customer_id, changed_by, on_behalf_of, reason, old_masked,
                                                new_masked)
    VALUES (p_customer_id, session_user, p_on_behalf_of, p_reason, payments.mask_email(v_old),
            payments.mask_email(p_new_email));
END
$$;

-- What people read instead of the plaintext: the e-mail masked, the client's
-- address as its /24 (IPv4) or /48 (IPv6).
CREATE VIEW payments.customer_masked AS
SELECT c.id, c.username, payments.mask_email(c.email) AS email_masked, c.created_at
  FROM payments.customer c;

CREATE VIEW payments.transaction_masked AS
SELECT t.id, t.created_at, t.merchant_id, t.customer_id, t.payment_method_id, t.amount, t.currency, t.status,
       payments.mask_ip(t.client_ip) AS client_network, t.location_id, t.device_type, t.updated_at
  FROM payments.transaction t;

-- A customer's name, one customer at a time, as the application serves one.
-- Each call takes a transaction-level advisory lock on the customer, which
-- the caller cannot release; more distinct customers in one transaction
-- than 10 is a bulk decryption: refused with PX429 and logged.
CREATE FUNCTION payments.customer_full_name(p_customer_id bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- 'pii' as the advisory lock's class
    c_class   constant integer := 1885956384;
    c_limit   constant integer := 10;
    v_count   bigint;
    v_row     record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(c_class, (p_customer_id % 2147483647)::integer);
    SELECT count(*) INTO v_count FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.classid = c_class::oid AND l.objsubid = 2;
    IF v_count > c_limit THEN
        RAISE LOG 'pgops: bulk decryption refused: % asked for a %th customer''s name in one transaction (limit %)',
            session_user, v_count, c_limit;
        RAISE EXCEPTION 'bulk decryption refused: names of more than % customers in one transaction', c_limit
            USING ERRCODE = 'PX429',
                  HINT = 'Decrypt the name of the customer being served, one at a time.';
    END IF;
    SELECT c.full_name_enc, c.full_name_key_version INTO v_row FROM payments.customer c WHERE c.id = p_customer_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN payments.pii_decrypt(v_row.full_name_enc, v_row.full_name_key_version);
END
$$;

REVOKE ALL ON FUNCTION payments.mask_email(text), payments.mask_ip(inet),
    payments.change_customer_email(bigint, text, text, text), payments.customer_full_name(bigint) FROM PUBLIC;

-- 4. Function DDL under the permit. The start trigger now also snapshots the
-- protected state before a DROP FUNCTION (whose CASCADE drops triggers), and
-- a CREATE OR REPLACE, ALTER or DROP of a function of the payments or pgops
-- schema needs a permit, whoever runs it (migrations take one: the runner).
CREATE FUNCTION pgops.tg_protected_routine_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_changed text;
BEGIN
    IF EXISTS (SELECT 1 FROM pgops.protected_ddl_permit WHERE xact = pg_current_xact_id()) THEN
        RETURN;
    END IF;
    SELECT string_agg(c.object_identity, ', ') INTO v_changed
      FROM pg_event_trigger_ddl_commands() c
     WHERE c.object_type IN ('function', 'procedure', 'routine', 'aggregate')
       AND c.schema_name IN ('payments', 'pgops');
    IF v_changed IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % of %', tg_tag, v_changed
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Functions of the payments and pgops schemas change only in a migration or under a permit '
                         '(pgops.permit_protected_ddl, superuser; see docs/schema.md).';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pgops.tg_protected_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_before jsonb := coalesce(nullif(current_setting('pgops.protected_snapshot', true), ''), '[]')::jsonb;
    v_dropped text;
BEGIN
    IF EXISTS (SELECT 1 FROM pgops.protected_ddl_permit WHERE xact = pg_current_xact_id()) THEN
        RETURN;
    END IF;
    SELECT string_agg(l.object_identity, ', ') FILTER (WHERE l.n <= 3)
           || CASE WHEN count(*) > 3 THEN format(' and %s more', count(*) - 3) ELSE '' END
      INTO v_dropped
      FROM (SELECT d.object_identity, row_number() OVER () AS n
      FROM pg_event_trigger_dropped_objects() d
     WHERE (d.object_type = 'table' AND EXISTS (SELECT 1 FROM jsonb_array_elements(v_before) b
                                                 WHERE b ->> 'partition' = d.object_identity))
        OR (d.object_type = 'trigger' AND EXISTS (SELECT 1 FROM jsonb_array_elements(v_before) b
                                                   WHERE d.object_identity = format('%s on %s', b ->> 'trigger_name',
                                                                                    b ->> 'partition')))
        OR (d.object_type IN ('function', 'procedure', 'routine', 'aggregate')
            AND d.schema_name IN ('payments', 'pgops'))) l;
    IF v_dropped IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % of %', tg_tag, v_dropped
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Partitions and triggers of protected tables, and the functions of the payments and pgops '
                         'schemas, change only under a permit (pgops.permit_protected_ddl, superuser; see '
                         'docs/schema.md).';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION pgops.tg_protected_routine_ddl() FROM PUBLIC;

DROP EVENT TRIGGER pgops_protect_start;
CREATE EVENT TRIGGER pgops_protect_start ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'CREATE TABLE', 'ALTER TRIGGER', 'DROP TRIGGER', 'ALTER SCHEMA',
                 'DROP SCHEMA', 'DROP OWNED', 'ALTER EXTENSION', 'DROP EXTENSION', 'DROP FUNCTION',
                 'DROP PROCEDURE', 'DROP ROUTINE', 'DROP AGGREGATE')
    EXECUTE FUNCTION pgops.tg_protected_ddl_start();
CREATE EVENT TRIGGER pgops_protect_routines ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'ALTER FUNCTION', 'CREATE PROCEDURE', 'ALTER PROCEDURE', 'ALTER ROUTINE',
                 'CREATE AGGREGATE', 'ALTER AGGREGATE')
    EXECUTE FUNCTION pgops.tg_protected_routine_ddl();

-- An audit trail nobody can forge or erase.
--
-- 1. Who did it is recorded by the server: changed_by / created_by are the
--    session user (the login, even inside SECURITY DEFINER functions); what
--    the caller says (an operator acting for a customer, a service name)
--    goes to on_behalf_of. Adding a nullable column is a catalog change only.
ALTER TABLE payments.transaction_state_change ADD COLUMN on_behalf_of text CHECK (length(on_behalf_of) <= 200);
ALTER TABLE payments.refund ADD COLUMN on_behalf_of text CHECK (length(on_behalf_of) <= 200);
COMMENT ON COLUMN payments.transaction_state_change.changed_by IS 'session_user of the change, recorded by the server';
COMMENT ON COLUMN payments.transaction_state_change.on_behalf_of IS 'who the caller says it acted for (free text)';
COMMENT ON COLUMN payments.refund.created_by IS 'session_user of the refund, recorded by the server';

-- 2. A status changes only inside the schema owner's functions, which write
--    the audit row in the same statement. The guard no longer trusts a
--    session setting (any session could set payments.status_change): it
--    requires the current user to be the table's owner, which only the
--    owner's SECURITY DEFINER functions are (no login is a member of it).
CREATE OR REPLACE FUNCTION payments.tg_transaction_guard() RETURNS trigger
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
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF current_user::regrole <> (SELECT c.relowner::regrole FROM pg_catalog.pg_class c
                                      WHERE c.oid = coalesce(pg_catalog.pg_partition_root(TG_RELID), TG_RELID)) THEN
            RAISE EXCEPTION 'transaction %: status changes go through the payment functions', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM payments.transaction_status_transition
                        WHERE from_status = OLD.status AND to_status = NEW.status) THEN
            RAISE EXCEPTION 'transaction %: illegal status transition % -> %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- The one way to change a status, callable only by the owner's functions
-- (EXECUTE is revoked from everyone): lock the row, change it, write the
-- audit row with the server's idea of who did it.
DROP FUNCTION payments.change_transaction_status(bigint, timestamptz, text, text, text);
CREATE FUNCTION payments.change_transaction_status(
    p_transaction_id bigint,
    p_created_at     timestamptz,
    p_to_status      text,
    p_reason         text,
    p_on_behalf_of   text
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_from text;
BEGIN
    SELECT t.status INTO v_from FROM payments.transaction t
     WHERE t.id = p_transaction_id AND t.created_at = p_created_at
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % created at % does not exist', p_transaction_id, p_created_at
            USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE payments.transaction SET status = p_to_status, updated_at = clock_timestamp()
     WHERE id = p_transaction_id AND created_at = p_created_at;
    INSERT INTO payments.transaction_state_change
           (transaction_id, transaction_created_at, from_status, to_status, reason, changed_by, on_behalf_of)
    VALUES (p_transaction_id, p_created_at, v_from, p_to_status, p_reason, session_user, p_on_behalf_of);
    RETURN v_from;
END
$$;
REVOKE ALL ON FUNCTION payments.change_transaction_status(bigint, timestamptz, text, text, text) FROM PUBLIC;

-- 3. Erasing the trail. The append-only row triggers are cloned onto every
--    partition, but the TRUNCATE triggers are statement triggers on the
--    parents, which TRUNCATE of a partition never fires: every partition
--    gets its own, and the event trigger below adds it to partitions created
--    later (pg_partman).
CREATE TABLE pgops.protected_table (
    parent regclass PRIMARY KEY
);
COMMENT ON TABLE pgops.protected_table IS
    'Tables whose partitions may not be detached, dropped or truncated, nor their triggers disabled or dropped';
INSERT INTO pgops.protected_table (parent) VALUES
    ('payments.transaction'), ('payments.transaction_state_change'), ('payments.refund'),
    ('payments.fraud_assessment'), ('payments.fraud_assessment_indicator');
REVOKE ALL ON pgops.protected_table FROM PUBLIC;

-- A permit lets the current transaction change a protected table's
-- partitions or triggers: the documented, audited way to retire a partition
-- (docs/schema.md). Only the superuser can write one; it stays as a record.
CREATE TABLE pgops.protected_ddl_permit (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xact       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    granted_by text        NOT NULL DEFAULT session_user,
    granted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason     text        NOT NULL CHECK (length(reason) >= 10)
);
REVOKE ALL ON pgops.protected_ddl_permit FROM PUBLIC;

CREATE FUNCTION pgops.permit_protected_ddl(p_reason text) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO pgops.protected_ddl_permit (reason) VALUES (p_reason) RETURNING id
$$;
REVOKE ALL ON FUNCTION pgops.permit_protected_ddl(text) FROM PUBLIC;

-- The partitions of every protected table, and the user triggers each
-- protected table or partition carries, as they are now.
CREATE FUNCTION pgops.protected_state() RETURNS TABLE (parent regclass, partition regclass, trigger_name name,
                                                       trigger_enabled "char")
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.parent, t.relid, tg.tgname, tg.tgenabled
      FROM pgops.protected_table p
     CROSS JOIN LATERAL pg_partition_tree(p.parent) t
      LEFT JOIN pg_trigger tg ON tg.tgrelid = t.relid AND NOT tg.tgisinternal
$$;
REVOKE ALL ON FUNCTION pgops.protected_state() FROM PUBLIC;

CREATE FUNCTION pgops.add_truncate_guards() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rel   record;
    v_count integer := 0;
BEGIN
    FOR v_rel IN
        SELECT t.relid FROM pgops.protected_table p CROSS JOIN LATERAL pg_partition_tree(p.parent) t
         WHERE t.level > 0 AND t.isleaf
           AND NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = t.relid AND tg.tgname = 'no_truncate')
    LOOP
        EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION payments.tg_append_only()', v_rel.relid);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION pgops.add_truncate_guards() FROM PUBLIC;
SELECT pgops.add_truncate_guards();

-- Before a DDL command, remember the protected state; after it, refuse a
-- command that removed a partition or a trigger, or disabled a trigger,
-- unless the transaction holds a permit. New partitions get their
-- TRUNCATE guard. State-based: it does not matter which command or which
-- role (the owner included) tried. The functions run as their owner, the
-- superuser, so that any role's DDL (a temporary table included) can be
-- checked.
CREATE FUNCTION pgops.tg_protected_ddl_start() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('pgops.protected_snapshot',
                       coalesce((SELECT json_agg(s)::text FROM pgops.protected_state() s), '[]'), true);
END
$$;

CREATE FUNCTION pgops.tg_protected_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_before jsonb := coalesce(nullif(current_setting('pgops.protected_snapshot', true), ''), '[]')::jsonb;
    v_lost   text;
BEGIN
    PERFORM set_config('pgops.protected_snapshot', '', true);
    IF EXISTS (SELECT 1 FROM pgops.protected_ddl_permit WHERE xact = pg_current_xact_id()) THEN
        RETURN;
    END IF;
    -- Partitions, and the triggers of each, that were there before the
    -- command and are gone, renamed or disabled now.
    WITH after AS (SELECT * FROM pgops.protected_state()),
         before AS (SELECT * FROM jsonb_to_recordset(v_before)
                                  AS b (parent text, partition text, trigger_name name, trigger_enabled text))
    SELECT string_agg(l.what, ', ' ORDER BY l.what) FILTER (WHERE l.n <= 3)
           || CASE WHEN count(*) > 3 THEN format(' and %s more', count(*) - 3) ELSE '' END
      INTO v_lost
      FROM (SELECT DISTINCT b.partition || coalesce(' trigger ' || b.trigger_name, '') AS what,
                   dense_rank() OVER (ORDER BY b.partition || coalesce(' trigger ' || b.trigger_name, '')) AS n
      FROM before b
     WHERE NOT EXISTS (SELECT 1 FROM after a
                        WHERE a.partition::text = b.partition
                          AND (b.trigger_name IS NULL
                               OR (a.trigger_name = b.trigger_name
                                   AND (a.trigger_enabled = 'O' OR a.trigger_enabled::text = b.trigger_enabled))))) l;
    IF v_lost IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % on the audit trail or transactions: %', tg_tag, v_lost
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Partitions and triggers of protected tables change only under a permit '
                         '(pgops.permit_protected_ddl, superuser; see docs/schema.md).';
    END IF;
    PERFORM pgops.add_truncate_guards();
END
$$;

CREATE FUNCTION pgops.tg_protected_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_before jsonb := coalesce(nullif(current_setting('pgops.protected_snapshot', true), ''), '[]')::jsonb;
    v_dropped text;
BEGIN
    IF EXISTS (SELECT 1 FROM pgops.protected_ddl_permit WHERE xact = pg_current_xact_id()) THEN
        RETURN;
    END IF;
    SELECT string_agg(d.object_identity, ', ') INTO v_dropped
      FROM pg_event_trigger_dropped_objects() d
     WHERE (d.object_type = 'table' AND EXISTS (SELECT 1 FROM jsonb_array_elements(v_before) b
                                                 WHERE b ->> 'partition' = d.object_identity))
        OR (d.object_type = 'trigger' AND EXISTS (SELECT 1 FROM jsonb_array_elements(v_before) b
                                                   WHERE d.object_identity = format('%s on %s', b ->> 'trigger_name',
                                                                                    b ->> 'partition')));
    IF v_dropped IS NOT NULL THEN
        RAISE EXCEPTION 'refused: % of %', tg_tag, v_dropped
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Partitions and triggers of protected tables change only under a permit '
                         '(pgops.permit_protected_ddl, superuser; see docs/schema.md).';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgops.tg_protected_ddl_start(), pgops.tg_protected_ddl_end(), pgops.tg_protected_drop()
    FROM PUBLIC;

-- Every command that can remove a partition or a trigger: a DROP SCHEMA ...
-- CASCADE, a DROP OWNED or a renamed trigger is as much a loss as a DETACH.
CREATE EVENT TRIGGER pgops_protect_start ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'CREATE TABLE', 'ALTER TRIGGER', 'DROP TRIGGER', 'ALTER SCHEMA',
                 'DROP SCHEMA', 'DROP OWNED', 'ALTER EXTENSION', 'DROP EXTENSION')
    EXECUTE FUNCTION pgops.tg_protected_ddl_start();
CREATE EVENT TRIGGER pgops_protect_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'CREATE TABLE', 'ALTER TRIGGER', 'DROP TRIGGER', 'ALTER SCHEMA',
                 'DROP SCHEMA', 'DROP OWNED', 'ALTER EXTENSION', 'DROP EXTENSION')
    EXECUTE FUNCTION pgops.tg_protected_ddl_end();
CREATE EVENT TRIGGER pgops_protect_drop ON sql_drop
    EXECUTE FUNCTION pgops.tg_protected_drop();

-- Settings the schema's functions trust come from a table only the
-- superuser writes (the schema role, on the primary; replicated with the
-- data), never from session settings: before this, any session could
-- `SET pgops.pii_key_version` or `pgops.pii_key_dir` and the functions
-- believed it.
CREATE TABLE pgops.config (
    name  text PRIMARY KEY CHECK (name IN ('pii_key_dir', 'pii_key_version', 'bcrypt_cost')),
    value text NOT NULL,
    CHECK (CASE name
               WHEN 'pii_key_dir' THEN value ~ '^/[A-Za-z0-9._/-]+$' AND value !~ '(^|/)\.\.(/|$)'
               WHEN 'pii_key_version' THEN value ~ '^[1-9][0-9]{0,8}$'
               WHEN 'bcrypt_cost' THEN value ~ '^[0-9]{2}$' AND value::int BETWEEN 10 AND 16
           END)
);
COMMENT ON TABLE pgops.config IS 'Settings the payments functions trust; written by the schema role as the superuser only';
REVOKE ALL ON pgops.config FROM PUBLIC;

-- The current values of the server settings the role wrote until now, so an
-- upgraded database keeps working before the schema role writes the table.
INSERT INTO pgops.config (name, value)
SELECT s.name, s.value
  FROM (VALUES ('pii_key_dir', nullif(current_setting('pgops.pii_key_dir', true), '')),
               ('pii_key_version', nullif(current_setting('pgops.pii_key_version', true), '')),
               ('bcrypt_cost', nullif(current_setting('pgops.bcrypt_cost', true), ''))) AS s (name, value)
 WHERE s.value IS NOT NULL;

-- The key-reading functions. They are owned by a NOLOGIN key-owner role that
-- holds pg_read_server_files (the access role assigns them), so nothing runs
-- as the superuser; they call only built-in and pgcrypto functions, fully
-- qualified, and read their settings from pgops.config. pii_key_version()
-- (an ordinary function that SECURITY DEFINER code called, which anyone able
-- to replace it could use to become superuser) is gone.
CREATE OR REPLACE FUNCTION payments.pii_key(p_version integer) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_dir text;
BEGIN
    SELECT c.value INTO v_dir FROM pgops.config c WHERE c.name = 'pii_key_dir';
    IF v_dir IS NULL THEN
        RAISE EXCEPTION 'no PII key directory configured (pgops.config pii_key_dir)'
            USING ERRCODE = 'config_file_error';
    END IF;
    IF p_version IS NULL OR p_version < 1 THEN
        RAISE EXCEPTION 'PII key version must be a positive integer' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN pg_catalog.btrim(pg_catalog.pg_read_file(pg_catalog.format('%s/pii-key-%s', v_dir, p_version)),
                            E' \n\r\t');
END
$$;
REVOKE ALL ON FUNCTION payments.pii_key(integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION payments.pii_encrypt(p_plaintext text, OUT ciphertext bytea, OUT key_version integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT c.value::integer INTO key_version FROM pgops.config c WHERE c.name = 'pii_key_version';
    IF key_version IS NULL THEN
        RAISE EXCEPTION 'no current PII key version configured (pgops.config pii_key_version)'
            USING ERRCODE = 'config_file_error';
    END IF;
    ciphertext := public.pgp_sym_encrypt(p_plaintext, payments.pii_key(key_version), 'cipher-algo=aes256');
END
$$;
REVOKE ALL ON FUNCTION payments.pii_encrypt(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION payments.pii_decrypt(p_ciphertext bytea, p_key_version integer) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT public.pgp_sym_decrypt(p_ciphertext, payments.pii_key(p_key_version))
$$;
REVOKE ALL ON FUNCTION payments.pii_decrypt(bytea, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION payments.pii_reencrypt(p_batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_version integer;
    v_count   integer;
BEGIN
    SELECT c.value::integer INTO v_version FROM pgops.config c WHERE c.name = 'pii_key_version';
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'no current PII key version configured (pgops.config pii_key_version)'
            USING ERRCODE = 'config_file_error';
    END IF;
    WITH batch AS (
        SELECT id FROM payments.customer
         WHERE full_name_key_version <> v_version
         ORDER BY id LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    )
    UPDATE payments.customer c
       SET full_name_enc = public.pgp_sym_encrypt(
               public.pgp_sym_decrypt(c.full_name_enc, payments.pii_key(c.full_name_key_version)),
               payments.pii_key(v_version), 'cipher-algo=aes256'),
           full_name_key_version = v_version
      FROM batch
     WHERE c.id = batch.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION payments.pii_reencrypt(integer) FROM PUBLIC;

DROP FUNCTION payments.pii_key_version();

-- Key rotation in one server-side loop, committing after every batch (a
-- procedure: SECURITY DEFINER code cannot commit, so this one runs as its
-- caller, the superuser, and calls the key owner's pii_reencrypt; nor can a
-- procedure with a SET clause, so every name in it is qualified).
CREATE PROCEDURE pgops.pii_rotate(p_batch integer DEFAULT 1000, INOUT reencrypted bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    v_done integer;
BEGIN
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'batch size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    reencrypted := 0;
    LOOP
        v_done := payments.pii_reencrypt(p_batch);
        reencrypted := reencrypted + v_done;
        COMMIT;
        EXIT WHEN v_done = 0;
    END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE pgops.pii_rotate(integer, bigint) FROM PUBLIC;

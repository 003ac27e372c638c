-- Re-encrypt PII made with an older key version under the current one, in
-- batches (rows locked, others skipped, so it runs beside live traffic).
-- Returns how many rows it re-encrypted; call until it returns 0. Owned by the
-- superuser like the other key-reading functions; executable by nobody else.
CREATE FUNCTION payments.pii_reencrypt(p_batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_version integer := payments.pii_key_version();
    v_count   integer;
BEGIN
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'no current PII key version configured (pgops.pii_key_version)'
            USING ERRCODE = 'config_file_error';
    END IF;
    WITH batch AS (
        SELECT id FROM payments.customer
         WHERE full_name_key_version <> v_version
         ORDER BY id LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    )
    UPDATE payments.customer c
       SET full_name_enc = pgp_sym_encrypt(
               pgp_sym_decrypt(c.full_name_enc, payments.pii_key(c.full_name_key_version)),
               payments.pii_key(v_version), 'cipher-algo=aes256'),
           full_name_key_version = v_version
      FROM batch
     WHERE c.id = batch.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION payments.pii_reencrypt(integer) FROM PUBLIC;

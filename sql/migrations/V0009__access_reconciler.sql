-- Access control as one idempotent reconciliation, called by the `access`
-- role with the role names from the inventory. It reports whether anything
-- changed by comparing a fingerprint of owners, ACLs (as sorted sets),
-- default privileges and memberships before and after; in check mode the
-- caller rolls the transaction back, so check mode tells the truth.

CREATE FUNCTION pgops.access_fingerprint(p_schema text, p_roles text[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH acl(item) AS (
        SELECT format('rel %s %s %s', c.oid::regclass, c.relowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(c.relacl) a ORDER BY 1))
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = p_schema
        UNION ALL
        SELECT format('fn %s %s %s', p.oid::regprocedure, p.proowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(p.proacl) a ORDER BY 1))
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = p_schema
        UNION ALL
        SELECT format('nsp %s %s %s', nspname, nspowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(nspacl) a ORDER BY 1))
          FROM pg_namespace WHERE nspname IN (p_schema, 'public')
        UNION ALL
        SELECT format('def %s %s %s %s', d.defaclrole::regrole, d.defaclnamespace::regnamespace, d.defaclobjtype,
                      ARRAY(SELECT a::text FROM unnest(d.defaclacl) a ORDER BY 1))
          FROM pg_default_acl d
        UNION ALL
        SELECT format('db %s %s', datname, ARRAY(SELECT a::text FROM unnest(datacl) a ORDER BY 1))
          FROM pg_database WHERE datname = current_database()
        UNION ALL
        SELECT format('member %s %s %s', m.roleid::regrole, m.member::regrole, m.admin_option)
          FROM pg_auth_members m
         WHERE m.member::regrole::text = ANY (p_roles) OR m.roleid::regrole::text = ANY (p_roles)
        UNION ALL
        SELECT format('role %s %s %s %s %s', rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls)
          FROM pg_roles WHERE rolname = ANY (p_roles)
    )
    SELECT md5(string_agg(item, E'\n' ORDER BY item)) FROM acl
$$;

-- p_config keys: schema, owner, admin, developer, readonly, app, pii, backup,
-- monitoring (role names); audit_tables (names in the schema whose rows only
-- the schema's functions write); pii_functions (signatures only the pii role
-- may execute); definer_functions (signatures that stay owned by the caller,
-- the superuser, because they read the key files).
CREATE FUNCTION pgops.reconcile_access(p_config jsonb) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s        text := p_config ->> 'schema';
    v_owner  text := p_config ->> 'owner';
    v_admin  text := p_config ->> 'admin';
    v_dev    text := p_config ->> 'developer';
    v_ro     text := p_config ->> 'readonly';
    v_app    text := p_config ->> 'app';
    v_pii    text := p_config ->> 'pii';
    v_backup text := p_config ->> 'backup';
    v_mon    text := p_config ->> 'monitoring';
    v_groups text[] := ARRAY[v_owner, v_admin, v_dev, v_ro, v_app, v_pii, v_backup, v_mon];
    v_writers text;
    v_readers text;
    v_before text;
    v_obj    record;
    v_name   text;
    v_creator text;
BEGIN
    v_before := pgops.access_fingerprint(s, v_groups);
    v_writers := format('%I, %I, %I', v_admin, v_dev, v_app);
    v_readers := format('%I, %I, %I, %I', v_admin, v_dev, v_app, v_ro);

    -- Group roles: NOLOGIN, no special attributes.
    FOREACH v_name IN ARRAY v_groups LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_name);
        END IF;
        EXECUTE format('ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION INHERIT',
                       v_name);
    END LOOP;

    -- Memberships between groups: Admin administers through the schema
    -- owner, sees PII, monitors and may cancel sessions; the service sees PII.
    EXECUTE format('GRANT %I, %I, pg_monitor, pg_signal_backend TO %I', v_owner, v_pii, v_admin);
    EXECUTE format('GRANT %I TO %I', v_pii, v_app);
    EXECUTE format('GRANT pg_read_all_data TO %I', v_backup);
    EXECUTE format('GRANT pg_monitor TO %I', v_mon);

    -- The database: nothing for PUBLIC; CONNECT for the groups that use it.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %s, %I, %I', current_database(), v_readers,
                   v_backup, v_mon);
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), v_admin);
    -- pgcrypto lives in public: only the owner's functions need to see it.
    REVOKE ALL ON SCHEMA public FROM PUBLIC;
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', v_owner);

    -- Ownership: the NOLOGIN schema owner owns the schema and its objects,
    -- except the functions that must run as the superuser.
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', s, v_owner);
    FOR v_obj IN
        SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = s AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND c.relowner <> v_owner::regrole
           AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
                       CASE v_obj.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                          WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                       v_obj.obj, v_owner);
    END LOOP;
    FOR v_obj IN
        SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = s AND p.proowner <> v_owner::regrole
           AND NOT p.oid::regprocedure::text = ANY (ARRAY(SELECT jsonb_array_elements_text(p_config -> 'definer_functions')))
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_obj.fn, v_owner);
    END LOOP;

    -- Nothing for PUBLIC in the schema.
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', s);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM PUBLIC', s);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM PUBLIC', s);
    EXECUTE format('REVOKE ALL ON ALL ROUTINES IN SCHEMA %I FROM PUBLIC', s);

    -- Readers read everything (PII only as ciphertext); writers write the
    -- business tables; nobody but the schema's functions writes the audit trail.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', s, v_readers);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %s', s, v_readers);
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %s', s, v_writers);
    EXECUTE format('REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA %I FROM %s', s, v_readers);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I FROM %I', s, v_ro);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %s', s, v_writers);
    EXECUTE format('GRANT EXECUTE ON ALL ROUTINES IN SCHEMA %I TO %s', s, v_writers);
    FOR v_name IN SELECT jsonb_array_elements_text(p_config -> 'audit_tables') LOOP
        FOR v_obj IN
            SELECT c.oid::regclass AS obj FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = s AND (c.relname = v_name OR c.oid IN (
                   SELECT inhrelid FROM pg_inherits WHERE inhparent = format('%I.%I', s, v_name)::regclass))
        LOOP
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM %s', v_obj.obj, v_writers);
        END LOOP;
    END LOOP;
    FOR v_name IN SELECT jsonb_array_elements_text(p_config -> 'definer_functions') LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC, %s', v_name, v_writers);
    END LOOP;
    FOR v_name IN SELECT jsonb_array_elements_text(p_config -> 'pii_functions') LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_name, v_pii);
    END LOOP;
    -- The owner's SECURITY DEFINER functions encrypt through pii_encrypt.
    EXECUTE format('GRANT EXECUTE ON ROUTINE %I.pii_encrypt(text) TO %I', s, v_owner);

    -- Tables, partitions and functions created later, by the owner or by the
    -- superuser (migrations, pg_partman's worker), get the same grants.
    FOREACH v_creator IN ARRAY ARRAY[v_owner, 'postgres'] LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %s',
                       v_creator, s, v_readers);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT INSERT, UPDATE, DELETE ON TABLES TO %s',
                       v_creator, s, v_writers);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %s',
                       v_creator, s, v_writers);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT EXECUTE ON ROUTINES TO %s',
                       v_creator, s, v_writers);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I REVOKE EXECUTE ON ROUTINES FROM PUBLIC', v_creator);
    END LOOP;

    RETURN pgops.access_fingerprint(s, v_groups) IS DISTINCT FROM v_before;
END
$$;
REVOKE ALL ON FUNCTION pgops.reconcile_access(jsonb) FROM PUBLIC;

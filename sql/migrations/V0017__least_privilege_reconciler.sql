-- Access control v2: least privilege from an explicit matrix.
--
-- The access role passes the role names and the matrix (roles/access/vars):
-- which group may read or write which table and column, and execute which
-- function. Everything else is revoked: the application and developers no
-- longer write transactions, keys, the audit trail, reference data or
-- credentials; admin is no longer a member of the schema owner; no login
-- and no group is a member of the owner or of the key owner; default
-- privileges give new tables to readers only.

CREATE OR REPLACE FUNCTION pgops.access_fingerprint(p_schema text, p_roles text[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH acl(item) AS (
        SELECT format('rel %s %s %s', c.oid::regclass, c.relowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(c.relacl) a ORDER BY 1))
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN (p_schema, 'pgops')
        UNION ALL
        SELECT format('col %s %s %s', a.attrelid::regclass, a.attname,
                      ARRAY(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1))
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = p_schema AND a.attacl IS NOT NULL
        UNION ALL
        SELECT format('fn %s %s %s', p.oid::regprocedure, p.proowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(p.proacl) a ORDER BY 1))
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN (p_schema, 'pgops') OR p.oid = 'pg_catalog.pg_read_file(text)'::regprocedure
        UNION ALL
        SELECT format('nsp %s %s %s', nspname, nspowner::regrole,
                      ARRAY(SELECT a::text FROM unnest(nspacl) a ORDER BY 1))
          FROM pg_namespace WHERE nspname IN (p_schema, 'public', 'pgops')
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
        SELECT format('role %s %s %s %s %s %s %s', rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls,
                      rolinherit, rolreplication)
          FROM pg_roles WHERE rolname = ANY (p_roles)
    )
    SELECT md5(string_agg(item, E'\n' ORDER BY item)) FROM acl
$$;
REVOKE ALL ON FUNCTION pgops.access_fingerprint(text, text[]) FROM PUBLIC;

-- A table and, when it is partitioned, its partitions (pg_partition_tree
-- returns nothing for a plain table).
CREATE FUNCTION pgops.table_and_partitions(p_table regclass) RETURNS TABLE (rel regclass, level integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_table, 0
    UNION ALL
    SELECT t.relid, t.level FROM pg_partition_tree(p_table) t WHERE t.level > 0
$$;
REVOKE ALL ON FUNCTION pgops.table_and_partitions(regclass) FROM PUBLIC;

-- p_config:
--   schema, owner, keyholder                       role and schema names
--   groups        {admin, developer, readonly, app, pii, backup, monitoring} -> role names
--   readers       logical groups that read the schema (CONNECT, USAGE)
--   pii_members   logical groups that are members of the pii group
--   tables        {table: {group: ["SELECT", "UPDATE(email)", ...]}}, where a
--                 group is a logical group, "readers", "owner" or "keyholder"
--   functions     {function name: [logical group or "owner", ...]}; every
--                 overload of the name; all others are executable by nobody
--   key_functions [function name]: owned by the key owner
-- Returns {"changed": bool, "unlisted": [tables of the schema missing from
-- `tables`: they get SELECT for the readers, like default privileges]}.
DROP FUNCTION pgops.reconcile_access(jsonb);
CREATE FUNCTION pgops.reconcile_access(p_config jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s           text := p_config ->> 'schema';
    v_owner     text := p_config ->> 'owner';
    v_keyholder text := p_config ->> 'keyholder';
    v_groups    jsonb := p_config -> 'groups';
    v_names     text[];
    v_readers   text;
    v_all       text;
    v_before    text;
    v_unlisted  text[] := '{}';
    v_obj       record;
    v_grant     record;
    v_name      text;
    v_creator   text;
    v_role      text;
    v_targets   text[];
    v_reader_names text[];
BEGIN
    IF s IS NULL OR v_owner IS NULL OR v_keyholder IS NULL OR v_groups IS NULL THEN
        RAISE EXCEPTION 'reconcile_access: schema, owner, keyholder and groups are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_names := ARRAY(SELECT jsonb_each_text.value FROM jsonb_each_text(v_groups)) || ARRAY[v_owner, v_keyholder];
    v_before := pgops.access_fingerprint(s, v_names);
    v_reader_names := ARRAY(SELECT v_groups ->> g FROM jsonb_array_elements_text(p_config -> 'readers') g);
    SELECT string_agg(format('%I', n), ', ') INTO v_readers FROM unnest(v_reader_names) n;
    SELECT string_agg(format('%I', n), ', ') INTO v_all FROM unnest(v_names) n WHERE n <> v_owner;

    -- Group roles: NOLOGIN, no special attributes, inheriting.
    FOREACH v_name IN ARRAY v_names LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_name);
        END IF;
        EXECUTE format('ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION INHERIT',
                       v_name);
    END LOOP;

    -- Nobody acts as the owner or the key owner: their privileges are
    -- reachable only through their SECURITY DEFINER functions.
    FOR v_obj IN
        SELECT m.roleid::regrole AS grp, m.member::regrole AS member FROM pg_auth_members m
         WHERE m.roleid IN (v_owner::regrole, v_keyholder::regrole)
    LOOP
        EXECUTE format('REVOKE %s FROM %s', v_obj.grp, v_obj.member);
    END LOOP;
    -- Groups that are members of the PII group: exactly pii_members (login
    -- users are the access role's business).
    FOR v_obj IN
        SELECT m.member::regrole AS member FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
         WHERE m.roleid = (v_groups ->> 'pii')::regrole AND NOT r.rolcanlogin
           AND NOT r.rolname IN (SELECT v_groups ->> g FROM jsonb_array_elements_text(p_config -> 'pii_members') g)
    LOOP
        EXECUTE format('REVOKE %I FROM %s', v_groups ->> 'pii', v_obj.member);
    END LOOP;
    FOR v_name IN SELECT jsonb_array_elements_text(p_config -> 'pii_members') LOOP
        EXECUTE format('GRANT %I TO %I', v_groups ->> 'pii', v_groups ->> v_name);
    END LOOP;
    EXECUTE format('GRANT pg_monitor, pg_signal_backend TO %I', v_groups ->> 'admin');
    EXECUTE format('GRANT pg_read_all_data TO %I', v_groups ->> 'backup');
    EXECUTE format('GRANT pg_monitor TO %I', v_groups ->> 'monitoring');
    -- The key owner reads the key files (outside the data directory).
    EXECUTE format('GRANT pg_read_server_files TO %I', v_keyholder);
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO %I', v_keyholder);

    -- The database: nothing for PUBLIC; CONNECT for the groups that use it,
    -- CREATE (own schemas) for admin, as the source document's "ALL
    -- PRIVILEGES ON DATABASE" had it.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC, %s', current_database(), v_all);
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %s', current_database(), v_readers);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I', current_database(), v_groups ->> 'pii',
                   v_groups ->> 'backup', v_groups ->> 'monitoring');
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), v_groups ->> 'admin');
    -- pgcrypto lives in public: only the definer functions' owners use it.
    EXECUTE format('REVOKE ALL ON SCHEMA public FROM PUBLIC, %s', v_all);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I, %I', v_owner, v_keyholder);
    -- pgops: the trusted settings, readable by the definer functions' owners.
    EXECUTE format('REVOKE ALL ON SCHEMA pgops FROM PUBLIC, %s', v_all);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA pgops FROM PUBLIC, %s', v_all);
    EXECUTE format('GRANT USAGE ON SCHEMA pgops TO %I, %I', v_owner, v_keyholder);
    EXECUTE format('GRANT SELECT ON pgops.config TO %I, %I', v_owner, v_keyholder);

    -- Ownership: the NOLOGIN owner owns the schema and its objects; the key
    -- owner owns the key-reading functions.
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
        SELECT p.oid::regprocedure AS fn,
               CASE WHEN p.proname::text IN (SELECT jsonb_array_elements_text(p_config -> 'key_functions'))
                    THEN v_keyholder ELSE v_owner END AS want
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = s
    LOOP
        IF (SELECT proowner FROM pg_proc WHERE oid = v_obj.fn) <> v_obj.want::regrole THEN
            EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_obj.fn, v_obj.want);
        END IF;
    END LOOP;

    -- Start from nothing: no privilege on the schema's objects for PUBLIC or
    -- any managed group (column privileges go with the table's).
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC, %s', s, v_all);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM PUBLIC, %s', s, v_all);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM PUBLIC, %s', s, v_all);
    -- (not from a routine's own owner: the key owner calls its own functions)
    FOR v_obj IN
        SELECT p.oid::regprocedure AS fn, p.proowner::regrole::text AS owner
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = s
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC, %s', v_obj.fn,
                       (SELECT string_agg(format('%I', r), ', ') FROM unnest(v_names) r WHERE r <> v_obj.owner));
    END LOOP;
    FOR v_obj IN
        SELECT a.attrelid::regclass AS rel, a.attname FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = s AND a.attacl IS NOT NULL
    LOOP
        EXECUTE format('REVOKE ALL (%I) ON %s FROM PUBLIC, %s', v_obj.attname, v_obj.rel, v_all);
    END LOOP;

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s, %I, %I', s, v_readers, v_groups ->> 'pii', v_keyholder);

    -- The matrix, on each table and (table-wide privileges) its partitions.
    FOR v_grant IN
        SELECT t.key AS tbl, g.key AS grp, p.value AS priv
          FROM jsonb_each(p_config -> 'tables') t
         CROSS JOIN LATERAL jsonb_each(t.value) g
         CROSS JOIN LATERAL jsonb_array_elements_text(g.value) p
    LOOP
        v_targets := CASE v_grant.grp WHEN 'owner' THEN ARRAY[v_owner] WHEN 'keyholder' THEN ARRAY[v_keyholder]
                                      WHEN 'readers' THEN v_reader_names ELSE ARRAY[v_groups ->> v_grant.grp] END;
        IF v_targets IS NULL OR array_position(v_targets, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'reconcile_access: unknown group % for table %', v_grant.grp, v_grant.tbl
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF v_grant.priv !~ '^(SELECT|INSERT|UPDATE|DELETE)(\([a-z_][a-z0-9_]*(, [a-z_][a-z0-9_]*)*\))?$' THEN
            RAISE EXCEPTION 'reconcile_access: % is not a privilege (SELECT, INSERT, UPDATE, DELETE, optionally with columns)',
                v_grant.priv USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF to_regclass(format('%I.%I', s, v_grant.tbl)) IS NULL THEN
            RAISE EXCEPTION 'reconcile_access: table %.% does not exist', s, v_grant.tbl
                USING ERRCODE = 'undefined_table';
        END IF;
        FOR v_obj IN SELECT t.rel, t.level FROM pgops.table_and_partitions(format('%I.%I', s, v_grant.tbl)::regclass) t
        LOOP
            CONTINUE WHEN v_obj.level > 0 AND v_grant.priv LIKE '%(%';
            EXECUTE format('GRANT %s ON %s TO %s', v_grant.priv, v_obj.rel,
                           (SELECT string_agg(format('%I', r), ', ') FROM unnest(v_targets) r));
        END LOOP;
    END LOOP;
    -- Tables nobody listed: readable like default privileges say, and reported.
    FOR v_obj IN
        SELECT c.oid::regclass AS rel, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = s AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
           AND NOT (p_config -> 'tables') ? c.relname::text
    LOOP
        v_unlisted := v_unlisted || v_obj.relname::text;
        FOR v_name IN SELECT t.rel::text FROM pgops.table_and_partitions(v_obj.rel) t LOOP
            EXECUTE format('GRANT SELECT ON %s TO %s', v_name, v_readers);
        END LOOP;
    END LOOP;

    FOR v_grant IN
        SELECT f.key AS fname, g.value AS grp
          FROM jsonb_each(p_config -> 'functions') f CROSS JOIN LATERAL jsonb_array_elements_text(f.value) g
    LOOP
        v_role := CASE v_grant.grp WHEN 'owner' THEN v_owner ELSE v_groups ->> v_grant.grp END;
        IF v_role IS NULL THEN
            RAISE EXCEPTION 'reconcile_access: unknown group % for function %', v_grant.grp, v_grant.fname
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR v_obj IN
            SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = s AND p.proname = v_grant.fname
        LOOP
            EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_obj.fn, v_role);
        END LOOP;
    END LOOP;

    -- Tables and partitions created later by the owner or the superuser
    -- (migrations, pg_partman's worker): readable by the readers, nothing
    -- more; routines: executable by nobody until listed.
    FOREACH v_creator IN ARRAY ARRAY[v_owner, 'postgres'] LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE ALL ON TABLES FROM %s',
                       v_creator, s, v_all);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE ALL ON SEQUENCES FROM %s',
                       v_creator, s, v_all);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE ALL ON ROUTINES FROM %s',
                       v_creator, s, v_all);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %s',
                       v_creator, s, v_readers);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I REVOKE EXECUTE ON ROUTINES FROM PUBLIC', v_creator);
    END LOOP;

    RETURN jsonb_build_object('changed', pgops.access_fingerprint(s, v_names) IS DISTINCT FROM v_before,
                              'unlisted', to_jsonb(v_unlisted));
END
$$;
REVOKE ALL ON FUNCTION pgops.reconcile_access(jsonb) FROM PUBLIC;

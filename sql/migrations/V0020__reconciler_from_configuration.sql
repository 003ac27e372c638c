-- Access control v3: the rest of the reconciler's decisions come from its
-- configuration too (roles/access/vars/main.yml), so the privilege matrix,
-- docs/schema.md and the tests read one source:
--   database          {group: [CONNECT, TEMPORARY, CREATE]}: nobody gets
--                     CREATE (no schema a privileged session could find
--                     first) and only the groups listed get TEMPORARY
--   builtin_roles     {group: [pg_monitor, ...]}: exact memberships of the
--                     predefined roles (pg_signal_backend for nobody)
--   revoked_functions built-in functions no login may execute (advisory
--                     locks, large objects): PUBLIC loses EXECUTE in this
--                     database; the superuser keeps them
--   builtin_functions {group: [built-in function]}: EXECUTE for the roles
--                     whose own functions call them
--   pinned_search_path the search_path of the privileged roles (the
--                     superuser running this, the owner, the key owner):
--                     no "$user" schema another role could create
--   superuser_database_settings {parameter: value} for the superuser's
--                     sessions in this database (lock_timeout: its DDL
--                     gives up rather than queue payments behind it)
-- and pgops.reconcile_logins() sets each login user's connection limit and
-- its settings (timeouts, temp_file_limit). The fingerprint that says
-- whether anything changed now covers all of these, and the schemas of the
-- database (a squatted one is a change).

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
        SELECT format('role %s %s %s %s %s %s %s %s', rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls,
                      rolinherit, rolreplication, rolconnlimit)
          FROM pg_roles WHERE rolname = ANY (p_roles) OR rolname = session_user
        UNION ALL
        SELECT format('builtin %s %s', p.oid::regprocedure, ARRAY(SELECT a::text FROM unnest(p.proacl) a ORDER BY 1))
          FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proacl IS NOT NULL
        UNION ALL
        SELECT format('setting %s %s %s', s.setrole::regrole, s.setdatabase, s.setconfig)
          FROM pg_db_role_setting s
         WHERE s.setrole <> 0 AND (s.setrole::regrole::text = ANY (p_roles) OR s.setrole::regrole::text = session_user)
           AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
        UNION ALL
        SELECT format('schema %s %s', nspname, nspowner::regrole) FROM pg_namespace
         WHERE nspname !~ '^pg_(toast_)?temp_[0-9]+$'
    )
    SELECT md5(string_agg(item, E'\n' ORDER BY item)) FROM acl
$$;
REVOKE ALL ON FUNCTION pgops.access_fingerprint(text, text[]) FROM PUBLIC;

-- The role names a matrix entry means: a logical group, "readers" (the
-- logical groups listed as readers), "owner" or "keyholder".
CREATE FUNCTION pgops.access_targets(p_config jsonb, p_group text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_targets text[] := CASE p_group
        WHEN 'owner' THEN ARRAY[p_config ->> 'owner']
        WHEN 'keyholder' THEN ARRAY[p_config ->> 'keyholder']
        WHEN 'readers' THEN ARRAY(SELECT p_config -> 'groups' ->> g FROM jsonb_array_elements_text(p_config -> 'readers') g)
        ELSE ARRAY[p_config -> 'groups' ->> p_group] END;
BEGIN
    IF v_targets IS NULL OR cardinality(v_targets) = 0 OR array_position(v_targets, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'reconcile_access: unknown group %', p_group USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_targets;
END
$$;
REVOKE ALL ON FUNCTION pgops.access_targets(jsonb, text) FROM PUBLIC;

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
--   database, builtin_roles, revoked_functions, builtin_functions,
--   pinned_search_path: above
-- Returns {"changed": bool, "unlisted": [tables of the schema missing from
-- `tables`: they get SELECT for the readers, like default privileges]}.
CREATE OR REPLACE FUNCTION pgops.reconcile_access(p_config jsonb) RETURNS jsonb
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
    -- Predefined roles: exactly the listed memberships for every managed
    -- role (pg_signal_backend for nobody: it could end the synchronous
    -- standbys' WAL senders and stall every commit).
    FOR v_obj IN
        SELECT m.roleid::regrole::text AS builtin, m.member::regrole::text AS member FROM pg_auth_members m
          JOIN pg_roles b ON b.oid = m.roleid
         WHERE b.rolname ~ '^pg_' AND m.member::regrole::text = ANY (v_names)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM jsonb_each(p_config -> 'builtin_roles') b
                        CROSS JOIN LATERAL jsonb_array_elements_text(b.value) r
                        WHERE r = v_obj.builtin AND v_obj.member = ANY (pgops.access_targets(p_config, b.key))) THEN
            EXECUTE format('REVOKE %I FROM %I', v_obj.builtin, v_obj.member);
        END IF;
    END LOOP;
    FOR v_grant IN
        SELECT b.key AS grp, r.value AS builtin FROM jsonb_each(p_config -> 'builtin_roles') b
         CROSS JOIN LATERAL jsonb_array_elements_text(b.value) r
    LOOP
        IF v_grant.builtin !~ '^pg_[a-z_]+$' THEN
            RAISE EXCEPTION 'reconcile_access: % is not a predefined role', v_grant.builtin
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        EXECUTE format('GRANT %I TO %s', v_grant.builtin,
                       (SELECT string_agg(format('%I', r), ', ') FROM unnest(pgops.access_targets(p_config, v_grant.grp)) r));
    END LOOP;
    -- Built-in functions no login may call in this database: advisory locks
    -- (the migration runner's and pg_partman's) and large objects; then the
    -- built-in functions a role's own functions need (the key owner reads
    -- the key files, and counts the names it decrypted with an advisory lock).
    FOR v_name IN SELECT jsonb_array_elements_text(p_config -> 'revoked_functions') LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, %s', v_name::regprocedure, v_all);
    END LOOP;
    FOR v_grant IN
        SELECT b.key AS grp, f.value AS fn FROM jsonb_each(p_config -> 'builtin_functions') b
         CROSS JOIN LATERAL jsonb_array_elements_text(b.value) f
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', v_grant.fn::regprocedure,
                       (SELECT string_agg(format('%I', r), ', ') FROM unnest(pgops.access_targets(p_config, v_grant.grp)) r));
    END LOOP;

    -- The privileged roles' search_path: pinned, no "$user" schema first.
    IF p_config ->> 'pinned_search_path' IS NOT NULL THEN
        FOREACH v_name IN ARRAY ARRAY[session_user::text, v_owner, v_keyholder] LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting r
                            WHERE r.setrole = v_name::regrole AND r.setdatabase = 0
                              AND format('search_path=%s', p_config ->> 'pinned_search_path') = ANY (r.setconfig)) THEN
                EXECUTE format('ALTER ROLE %I SET search_path = %s', v_name, p_config ->> 'pinned_search_path');
            END IF;
        END LOOP;
    END IF;

    -- The superuser's sessions in this database (pg_partman's worker, the
    -- roles' tasks) give up on a lock after a bound instead of queueing
    -- every payment behind their DDL.
    FOR v_grant IN SELECT e.key, e.value FROM jsonb_each_text(p_config -> 'superuser_database_settings') e LOOP
        IF v_grant.key !~ '^[a-z_]+$' THEN
            RAISE EXCEPTION 'reconcile_access: % is not a parameter name', v_grant.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting r
                        WHERE r.setrole = session_user::regrole
                          AND r.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND format('%s=%s', v_grant.key, v_grant.value) = ANY (r.setconfig)) THEN
            EXECUTE format('ALTER ROLE %I IN DATABASE %I SET %s = %L', session_user, current_database(),
                           v_grant.key, v_grant.value);
        END IF;
    END LOOP;

    -- The database: nothing for PUBLIC, exactly the listed privileges for
    -- each group. CREATE for nobody: a schema named after a privileged role
    -- would be first on its search_path.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC, %s', current_database(), v_all);
    FOR v_grant IN
        SELECT d.key AS grp, string_agg(p.value, ', ') AS privs FROM jsonb_each(p_config -> 'database') d
         CROSS JOIN LATERAL jsonb_array_elements_text(d.value) p GROUP BY d.key
    LOOP
        IF v_grant.privs !~ '^(CONNECT|TEMPORARY)(, (CONNECT|TEMPORARY))*$' THEN
            RAISE EXCEPTION 'reconcile_access: database privileges of % are CONNECT or TEMPORARY, not %',
                v_grant.grp, v_grant.privs USING ERRCODE = 'invalid_parameter_value';
        END IF;
        EXECUTE format('GRANT %s ON DATABASE %I TO %s', v_grant.privs, current_database(),
                       (SELECT string_agg(format('%I', r), ', ') FROM unnest(pgops.access_targets(p_config, v_grant.grp)) r));
    END LOOP;
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
            -- Function DDL needs a permit (V0019); this one is the record.
            IF NOT EXISTS (SELECT 1 FROM pgops.protected_ddl_permit WHERE xact = pg_current_xact_id()) THEN
                PERFORM pgops.permit_protected_ddl('access reconciliation: owners of new functions');
            END IF;
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
        v_targets := pgops.access_targets(p_config, v_grant.grp);
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
        FOR v_obj IN
            SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = s AND p.proname = v_grant.fname
        LOOP
            EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %s', v_obj.fn,
                           (SELECT string_agg(format('%I', r), ', ')
                              FROM unnest(pgops.access_targets(p_config, v_grant.grp)) r));
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

-- Each login user's connection limit and settings (its timeouts and
-- temp_file_limit: a login cannot raise a temp_file_limit set here, nor
-- open more sessions than its limit, on any path), exactly as listed.
-- p_logins: [{"name", "connection_limit", "settings": {parameter: value}}].
-- Returns whether anything changed.
CREATE FUNCTION pgops.reconcile_logins(p_logins jsonb) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_login   record;
    v_setting record;
    v_want    text[];
    v_have    text[];
    v_changed boolean := false;
BEGIN
    FOR v_login IN
        SELECT l ->> 'name' AS name, (l ->> 'connection_limit')::integer AS conn_limit,
               coalesce(l -> 'settings', '{}') AS settings
          FROM jsonb_array_elements(p_logins) l
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_login.name AND rolcanlogin AND NOT rolsuper) THEN
            RAISE EXCEPTION 'reconcile_logins: % is not a login user, or is a superuser', v_login.name
                USING ERRCODE = 'undefined_object';
        END IF;
        IF v_login.conn_limit IS NULL OR v_login.conn_limit < 1 THEN
            RAISE EXCEPTION 'reconcile_logins: % needs a connection limit of 1 at least', v_login.name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT rolconnlimit FROM pg_roles WHERE rolname = v_login.name) <> v_login.conn_limit THEN
            EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', v_login.name, v_login.conn_limit);
            v_changed := true;
        END IF;
        v_want := ARRAY(SELECT format('%s=%s', e.key, e.value) FROM jsonb_each_text(v_login.settings) e ORDER BY 1);
        v_have := ARRAY(SELECT c FROM pg_db_role_setting r CROSS JOIN LATERAL unnest(r.setconfig) c
                         WHERE r.setrole = v_login.name::regrole AND r.setdatabase = 0 ORDER BY 1);
        IF v_want IS DISTINCT FROM v_have THEN
            EXECUTE format('ALTER ROLE %I RESET ALL', v_login.name);
            FOR v_setting IN SELECT e.key, e.value FROM jsonb_each_text(v_login.settings) e LOOP
                IF v_setting.key !~ '^[a-z_]+(\.[a-z_]+)?$' THEN
                    RAISE EXCEPTION 'reconcile_logins: % is not a parameter name', v_setting.key
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                EXECUTE format('ALTER ROLE %I SET %s = %L', v_login.name, v_setting.key, v_setting.value);
            END LOOP;
            v_changed := true;
        END IF;
    END LOOP;
    RETURN v_changed;
END
$$;
REVOKE ALL ON FUNCTION pgops.reconcile_logins(jsonb) FROM PUBLIC;

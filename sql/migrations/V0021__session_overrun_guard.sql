-- Time limits a login cannot lift. Each login's settings
-- (pgops.reconcile_logins) carry pgops.statement_limit and
-- idle_in_transaction_session_timeout, but a session may SET either; this
-- function, run by the superuser every few seconds on every member (the
-- access role's pgops-session-guard timer), ends any session of a login
-- that has been active, or idle in a transaction, longer than its login's
-- own settings allow, plus a grace. It ends the session rather than cancel
-- the statement: a COMMIT canceled while it waits for the synchronous
-- standbys stays committed on the leader and is acknowledged, a terminated
-- one is not. Superusers' and replication sessions are not ended. Returns
-- how many it ended; each one is logged (LOG) with its reason.
CREATE FUNCTION pgops.end_overrunning_sessions(p_grace interval DEFAULT '5 seconds') RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_session record;
    v_count   integer := 0;
BEGIN
    FOR v_session IN
        WITH settings AS (
            SELECT s.setrole,
                   max(split_part(c, '=', 2)) FILTER (WHERE c LIKE 'pgops.statement\_limit=%') AS statement_timeout,
                   max(split_part(c, '=', 2)) FILTER (WHERE c LIKE 'idle_in_transaction_session_timeout=%')
                       AS idle_timeout
              FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) c
             WHERE s.setdatabase = 0
             GROUP BY s.setrole
        ), bounds AS (
            SELECT setrole,
                   nullif(CASE WHEN statement_timeout ~ '^[0-9]+$' THEN (statement_timeout || ' ms')::interval
                               ELSE statement_timeout::interval END, interval '0') AS statement_limit,
                   nullif(CASE WHEN idle_timeout ~ '^[0-9]+$' THEN (idle_timeout || ' ms')::interval
                               ELSE idle_timeout::interval END, interval '0') AS idle_limit
              FROM settings
        )
        SELECT a.pid, a.usename, a.state,
               CASE WHEN a.state = 'active' THEN format('active for %s, its pgops.statement_limit is %s',
                                                        date_trunc('second', now() - a.query_start), b.statement_limit)
                    ELSE format('idle in a transaction for %s, its idle_in_transaction_session_timeout is %s',
                                date_trunc('second', now() - a.state_change), b.idle_limit) END AS reason
          FROM pg_stat_activity a
          JOIN pg_roles r ON r.oid = a.usesysid
          JOIN bounds b ON b.setrole = a.usesysid
         WHERE a.backend_type = 'client backend' AND NOT r.rolsuper AND NOT r.rolreplication
           AND a.pid <> pg_backend_pid()
           AND ((a.state = 'active' AND now() - a.query_start > b.statement_limit + p_grace)
                OR (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                    AND now() - a.state_change > b.idle_limit + p_grace))
    LOOP
        IF pg_terminate_backend(v_session.pid) THEN
            RAISE LOG 'pgops session guard: ended session % of %: %', v_session.pid, v_session.usename,
                v_session.reason;
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION pgops.end_overrunning_sessions(interval) FROM PUBLIC;

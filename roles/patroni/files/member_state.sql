-- One member's own view of replication, next to what Patroni says (tasks/status.yml).
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS current_lsn,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
                            THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                            ELSE pg_current_wal_lsn() END, '0/0')::bigint AS position,
       CASE WHEN pg_is_in_recovery()
            THEN round(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::numeric, 3) END
         AS last_replayed_commit_age_s,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       (SELECT sender_host FROM pg_stat_wal_receiver) AS upstream,
       current_setting('synchronous_standby_names') AS synchronous_standby_names,
       current_setting('synchronous_commit') AS synchronous_commit,
       (SELECT coalesce(json_agg(json_build_object(
                 'name', application_name, 'client', host(client_addr), 'state', state, 'sync_state', sync_state,
                 'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),
                 'replay_lag_s', coalesce(extract(epoch FROM replay_lag), 0)) ORDER BY application_name), '[]')
          FROM pg_stat_replication WHERE NOT pg_is_in_recovery()) AS standbys,
       (SELECT coalesce(json_agg(json_build_object(
                 'slot', slot_name, 'active', active, 'wal_status', wal_status,
                 'restart_lsn', restart_lsn::text) ORDER BY slot_name), '[]')
          FROM pg_replication_slots) AS slots,
       (SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')) AS user_dbs,
       (SELECT last_archived_wal FROM pg_stat_archiver) AS last_archived_wal,
       (SELECT round(extract(epoch FROM now() - last_archived_time)::numeric, 1) FROM pg_stat_archiver)
         AS last_archived_wal_age_s,
       (SELECT failed_count FROM pg_stat_archiver) AS archive_failures

# Shared by the lab benchmarks (sourced, not run).

# settle HOST: wait (at most 3 min) until HOST, the lab's primary, has
# archived its WAL and its standbys have replayed it, so that a run does not
# pay for the archiving of the one before.
settle() {
  local host=$1 i
  for ((i = 0; i < 180; i++)); do
    [[ $(docker exec "$host" runuser -u postgres -- psql -XAtq -c "SELECT
          (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')
          + (SELECT count(*) FROM pg_stat_replication WHERE replay_lsn < pg_current_wal_lsn())") == 0 ]] && return
    sleep 1
  done
  echo "the lab did not settle within 3 minutes (archiving or replay behind); measuring anyway"
}

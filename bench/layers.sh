#!/usr/bin/env bash
# What each layer costs on the payment workload (bench/payment.pgbench), in
# one run on the lab, every client over TLS on TCP from the primary's own
# container (the same path for every layer):
#   1 stock      a bare single PostgreSQL of the same version with Debian's
#                stock settings (pg_createcluster, port 5499) holding a copy of
#                the payments database (pgaudit preloaded so that its
#                extension restores; pgaudit.log stays none)
#   2 tuned      the same copy on a second single server (port 5498) with the
#                postgresql role's own drop-in, copied from the lab primary:
#                its tuning, TLS and preloaded extensions; no audit logging
#   3 audit      + the audit role's drop-in (the source document's defaults),
#                also copied from the lab primary
#   4 sync       the lab primary as deployed: a 3-member cluster with
#                synchronous replication, WAL archiving, and two standbys
#                replaying on the same CPUs
#   5 pgbouncer  + PgBouncer (port 6432, transaction pooling)
#   6 haproxy    + HAProxy in front of PgBouncer (port 5000)
# Both single servers get a fresh copy of the payments database at the start,
# so layers 1-3 start from the same data. Every measured run follows a short
# unmeasured one (WARMUP seconds) on the same target. The layers run in the
# order 1..6 then 6..1 (drift cancels out), ROUNDS times; the table gives
# each layer's median and its ratio to layer 1.
# LAYERS picks some of them (in that order), HISTORY as bench/payment_workload.sh.
# MEMORY_MB=N runs each single server under a memory limit of N MB (its
# systemd unit's MemoryMax: shared memory, backends and the page cache it
# reads through), as on a host whose data does not fit its RAM; the host's
# page cache is dropped once the servers run, so that what they read is
# charged to them and a miss beyond the limit is a read from the disk.
#   bench/layers.sh ; env: SCALE=10 CLIENTS=8 DURATION=20 WARMUP=5 ROUNDS=1
#                          LAYERS="1-stock 2-tuned" HISTORY=0 MEMORY_MB=
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
host=pg-primary
out=bench/results/layers
mkdir -p "$out"
rm -f "$out"/*.json
export SCALE=${SCALE:-10} CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-20}
rounds=${ROUNDS:-1} warmup=${WARMUP:-5}
all=(1-stock 2-tuned 3-audit 4-sync 5-pgbouncer 6-haproxy)
read -r -a layers <<< "${LAYERS:-${all[*]}}"
for layer in "${layers[@]}"; do
  [[ " ${all[*]} " == *" $layer "* ]] || { echo "LAYERS: unknown layer $layer (known: ${all[*]})"; exit 2; }
done
psql_() { docker exec -i "$host" runuser -u postgres -- psql -XAtq "$@"; }

# The lab's primary must be the leader (the layers 4-6 run against it).
[[ $(psql_ -c "SELECT pg_is_in_recovery()") == f ]] || { echo "$host is not the leader: switch over first"; exit 1; }

# Sample data at SCALE (once), so that the working set exceeds stock
# shared_buffers (128MB).
DURATION=1 CLIENTS=1 LABEL=warmup OUT="$out/warmup" bench/payment_workload.sh "$host" >/dev/null
echo "payments database: $(psql_ -d payments -c "SELECT pg_size_pretty(pg_database_size('payments'))")"

version=$(psql_ -c "SHOW server_version_num" | cut -c1-2)
etc=/etc/postgresql/$version
lab_conf=$(psql_ -c "SELECT setting FROM pg_settings WHERE name = 'config_file'")
lab_confd=$(dirname "$lab_conf")/conf.d
# The roles' drop-ins, as the lab primary has them.
role_dropin=$(docker exec "$host" sh -c "grep -l '^shared_buffers' $lab_confd/*.conf")
audit_dropin=$(docker exec "$host" sh -c "grep -l '^pgaudit.log' $lab_confd/*.conf")

new_cluster() {  # name port: an empty cluster with Debian's stock settings
  local name=$1 port=$2
  if docker exec "$host" pg_lsclusters -h | grep -q "^$version $name "; then
    docker exec "$host" pg_dropcluster --stop "$version" "$name"
  fi
  docker exec "$host" rm -rf "$etc/$name"  # what pg_dropcluster leaves (our drop-ins)
  docker exec "$host" pg_createcluster "$version" "$name" -p "$port" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  docker exec "$host" sh -c "mkdir -p $etc/$name/conf.d && echo \"shared_preload_libraries = 'pgaudit'\" > $etc/$name/conf.d/40-bench.conf"
}
server_stats() {  # port: what the tuning changes, over all the runs on that server
  psql_ -p "$1" -d payments -c "SELECT format('shared_buffers hit ratio %s (%s reads per commit), checkpoints %s, WAL %s kB per commit (%s %% full-page images)',
      round(d.blks_hit::numeric / nullif(d.blks_hit + d.blks_read, 0), 4), round(d.blks_read::numeric / nullif(d.xact_commit, 0), 2),
      b.checkpoints_timed + b.checkpoints_req,
      round(w.wal_bytes / nullif(d.xact_commit, 0) / 1024, 2), round(100.0 * w.wal_fpi / nullif(w.wal_records, 0), 1))
    FROM pg_stat_database d, pg_stat_bgwriter b, pg_stat_wal w WHERE d.datname = 'payments'"
}

trap 'docker exec "$host" pg_dropcluster --stop "$version" stock; docker exec "$host" pg_dropcluster --stop "$version" tuned; docker exec "$host" rm -rf /var/log/postgresql/bench-audit' EXIT
echo "copying the payments database to the single servers (stock: 5499, tuned: 5498)"
new_cluster stock 5499
docker exec "$host" pg_ctlcluster "$version" stock start
# pg_restore's complaints (roles and extensions that exist) are expected; the
# copy is checked below instead.
docker exec "$host" sh -c "runuser -u postgres -- pg_dumpall -p 5432 --globals-only | runuser -u postgres -- psql -XAtq -p 5499 -d postgres >/dev/null 2>&1; \
  runuser -u postgres -- pg_dump -p 5432 -Fc payments | runuser -u postgres -- pg_restore -p 5499 --create -d postgres >/dev/null 2>&1" || true
copied=$(psql_ -p 5499 -d payments -c "SELECT count(*) FROM payments.transaction")
(( copied > 0 )) || { echo "the stock server has no copy of the payments data"; exit 1; }
# Hint bits and visibility map set once, for both copies; no parallel workers
# (their shared memory does not fit the container's 64 MB /dev/shm).
docker exec "$host" runuser -u postgres -- vacuumdb -q -p 5499 --parallel=0 --analyze payments
# The tuned server starts from the very same files.
stock_data=$(psql_ -p 5499 -c "SHOW data_directory")
docker exec "$host" pg_ctlcluster "$version" stock stop
new_cluster tuned 5498
tuned_data=$(docker exec "$host" pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "tuned" {print $6}')
docker exec "$host" sh -c "rm -rf '$tuned_data' && cp -a '$stock_data' '$tuned_data'"
docker exec "$host" pg_ctlcluster "$version" stock start
docker exec "$host" install -o postgres -g postgres -m 640 "$role_dropin" "$etc/tuned/conf.d/50-role.conf"
docker exec "$host" mkdir -p -m 700 /var/log/postgresql/bench-audit
docker exec "$host" chown postgres: /var/log/postgresql/bench-audit
# The audit drop-in logs to its own directory here, not to the lab's trail.
docker exec "$host" sh -c "sed 's|^log_directory = .*|log_directory = '\''/var/log/postgresql/bench-audit'\''|' \
  $audit_dropin > $etc/tuned/55-audit.conf.off"

audit() {  # off | on: the audit drop-in on the tuned server (logging_collector needs a restart)
  if [[ $1 == on ]]; then
    docker exec "$host" install -o postgres -g postgres -m 640 "$etc/tuned/55-audit.conf.off" "$etc/tuned/conf.d/55-audit.conf"
  else
    docker exec "$host" rm -f "$etc/tuned/conf.d/55-audit.conf"
  fi
  docker exec "$host" pg_ctlcluster "$version" tuned restart
}

# shellcheck source=bench/lib.sh
source bench/lib.sh

run() {  # layer round
  local layer=$1 n=$2 port=5432
  case $layer in
    1-stock) port=5499 ;;
    2-tuned|3-audit) port=5498 ;;
    5-pgbouncer) port=6432 ;;
    6-haproxy) port=5000 ;;
  esac
  settle "$host"
  BENCH_HOST=127.0.0.1 BENCH_PORT=$port BENCH_SSLMODE=require DURATION=$warmup \
    LABEL=warm OUT="$out/warmup" bench/payment_workload.sh "$host" >/dev/null
  BENCH_HOST=127.0.0.1 BENCH_PORT=$port BENCH_SSLMODE=require \
    LABEL="$layer-$n" OUT="$out" bench/payment_workload.sh "$host" >/dev/null
  printf '%-12s round %s: %s it/s\n' "$layer" "$n" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["iterations_per_s"])' "$out/$layer-$n.json")"
}

state=off
audit off
if [[ -n ${MEMORY_MB:-} ]]; then
  for name in stock tuned; do
    unit=postgresql@$version-$name.service
    docker exec "$host" systemctl set-property --runtime "$unit" MemoryMax="${MEMORY_MB}M"
    cgroup=$(docker exec "$host" systemctl show -P ControlGroup "$unit")
    # cgroup v2's memory.max, or v1's memory controller (page cache charged in both).
    limit=$(docker exec "$host" sh -c "cat /sys/fs/cgroup$cgroup/memory.max 2>/dev/null \
      || cat /sys/fs/cgroup/memory$cgroup/memory.limit_in_bytes 2>/dev/null" || true)
    [[ $limit == $((MEMORY_MB * 1024 * 1024)) ]] || { echo "MEMORY_MB: $unit's cgroup has memory.max '$limit', not ${MEMORY_MB} MB"; exit 1; }
  done
  sync
  echo 1 > /proc/sys/vm/drop_caches || { echo "MEMORY_MB: cannot drop the host's page cache (run as root on the Docker host)"; exit 1; }
  echo "single servers limited to ${MEMORY_MB} MB each; the host's page cache dropped"
fi
for port in 5499 5498; do
  psql_ -p "$port" -d payments -c "SELECT pg_stat_reset(), pg_stat_reset_shared('bgwriter'), pg_stat_reset_shared('wal')" >/dev/null
done
n=0
for ((r = 1; r <= rounds; r++)); do
  for layer in "${layers[@]}" $(printf '%s\n' "${layers[@]}" | tac); do
    want=$state
    [[ $layer == 2-tuned ]] && want=off
    [[ $layer == 3-audit ]] && want=on
    [[ $want != "$state" ]] && { audit "$want"; state=$want; }
    n=$((n + 1))
    run "$layer" "$n"
  done
done
# Whether the working set exceeded stock shared_buffers (misses came from the
# OS's cache), and what the tuning changes in checkpoints and WAL volume.
{ echo "stock: $(server_stats 5499)"; echo "tuned: $(server_stats 5498)"; } | tee "$out/single-servers.txt"
python3 bench/report.py layers "$out" docs/bench-layers.png

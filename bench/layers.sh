#!/usr/bin/env bash
# What each layer costs on the payment workload (bench/payment.pgbench), in
# one run on the lab, every client over TLS on TCP from the primary's own
# container (the same path for every layer):
#   1 stock      a bare PostgreSQL of the same version with Debian's stock
#                settings (pg_createcluster, port 5499) holding a copy of the
#                payments database (pgaudit preloaded so that its extension
#                restores; pgaudit.log stays none)
#   2 tuned      the lab primary (the postgresql role's tuning), audit
#                logging off, synchronous_commit=local (no standby waited for)
#   3 audit      + the source document's audit defaults
#   4 sync       + synchronous replication (the lab as deployed)
#   5 pgbouncer  + PgBouncer (port 6432, transaction pooling)
#   6 haproxy    + HAProxy in front of PgBouncer (port 5000)
# The layers run in the order 1..6 then 6..1 (drift cancels out), ROUNDS
# times; the table gives each layer's median and its ratio to layer 1.
#   bench/layers.sh ; env: SCALE=10 CLIENTS=8 DURATION=20 ROUNDS=1
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
host=pg-primary
out=bench/results/layers
mkdir -p "$out"
rm -f "$out"/*.json
export SCALE=${SCALE:-10} CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-20}
rounds=${ROUNDS:-1}
psql_() { docker exec -i "$host" runuser -u postgres -- psql -XAtq "$@"; }

# The lab's primary must be the leader (the layers 2-6 run against it).
[[ $(psql_ -c "SELECT pg_is_in_recovery()") == f ]] || { echo "$host is not the leader: switch over first"; exit 1; }

# Sample data at SCALE (once), so that the working set exceeds stock
# shared_buffers (128MB).
DURATION=1 CLIENTS=1 LABEL=warmup OUT="$out/warmup" bench/payment_workload.sh "$host" >/dev/null
echo "payments database: $(psql_ -d payments -c "SELECT pg_size_pretty(pg_database_size('payments'))")"

# Layer 1: a stock cluster beside the lab's, with a copy of the database.
version=$(psql_ -c "SHOW server_version_num" | cut -c1-2)
if ! docker exec "$host" pg_lsclusters -h | grep -q "^$version stock "; then
  echo "creating the stock cluster ($version/stock, port 5499)"
  docker exec "$host" pg_createcluster "$version" stock -p 5499 -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  docker exec "$host" sh -c "echo \"shared_preload_libraries = 'pgaudit'\" >> /etc/postgresql/$version/stock/conf.d/50-bench.conf" 2>/dev/null \
    || docker exec "$host" sh -c "mkdir -p /etc/postgresql/$version/stock/conf.d && echo \"shared_preload_libraries = 'pgaudit'\" > /etc/postgresql/$version/stock/conf.d/50-bench.conf"
  docker exec "$host" pg_ctlcluster "$version" stock start
  docker exec "$host" sh -c "runuser -u postgres -- pg_dumpall -p 5432 --globals-only | runuser -u postgres -- psql -XAtq -p 5499 -d postgres >/dev/null 2>&1; \
    runuser -u postgres -- pg_dump -p 5432 -Fc payments > /var/tmp/payments.dump && \
    runuser -u postgres -- pg_restore -p 5499 --create -d postgres /var/tmp/payments.dump >/dev/null 2>&1; rm -f /var/tmp/payments.dump"
fi
docker exec "$host" pg_ctlcluster "$version" stock start 2>/dev/null || true  # already running
# pg_restore's complaints (roles and extensions that exist) are expected; the
# copy is checked here instead.
copied=$(psql_ -p 5499 -d payments -c "SELECT count(*) FROM payments.transaction")
(( copied > 0 )) || { echo "the stock cluster has no copy of the payments data"; exit 1; }

audit() {  # off | on (the audit role; restored to the lab's settings at exit)
  if [[ $1 == off ]]; then
    ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" -e @bench/audit-off.json >/dev/null 2>&1
  else
    ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" >/dev/null 2>&1
  fi
}
trap 'audit on' EXIT

run() {  # layer round
  local layer=$1 n=$2 port=5432 options=""
  case $layer in
    1-stock) port=5499 ;;
    2-tuned|3-audit) options="-c synchronous_commit=local" ;;
    5-pgbouncer) port=6432 ;;
    6-haproxy) port=5000 ;;
  esac
  BENCH_HOST=127.0.0.1 BENCH_PORT=$port BENCH_SSLMODE=require BENCH_OPTIONS="$options" \
    LABEL="$layer-$n" OUT="$out" bench/payment_workload.sh "$host" >/dev/null
  printf '%-12s round %s: %s it/s\n' "$layer" "$n" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["iterations_per_s"])' "$out/$layer-$n.json")"
}

state=on
n=0
for ((r = 1; r <= rounds; r++)); do
  for layer in 1-stock 2-tuned 3-audit 4-sync 5-pgbouncer 6-haproxy 6-haproxy 5-pgbouncer 4-sync 3-audit 2-tuned 1-stock; do
    want=on; [[ $layer == 2-tuned ]] && want=off
    [[ $want != "$state" ]] && { audit "$want"; state=$want; }
    n=$((n + 1))
    run "$layer" "$n"
  done
done
python3 bench/report.py layers "$out" docs/bench-layers.png

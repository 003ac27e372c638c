#!/usr/bin/env bash
# The payment workload at 8, 64, 256 and 1024 clients, straight to the lab
# primary's PostgreSQL and through its PgBouncer (transaction pooling), every
# client over TLS on TCP from the primary's own container. Each client count
# runs direct, pooled, pooled, direct (drift cancels out). A run the server
# refuses (too many clients) is recorded as refused. p50/p99 latencies come
# from pgbench's per-transaction log.
#   bench/clients.sh ; env: SCALE=10 DURATION=20 COUNTS="8 64 256 1024"
set -euo pipefail
cd "$(dirname "$0")/.."
host=pg-primary
out=bench/results/clients
mkdir -p "$out"
rm -f "$out"/*.json
export SCALE=${SCALE:-10} DURATION=${DURATION:-20}
psql_() { docker exec -i "$host" runuser -u postgres -- psql -XAtq "$@"; }
[[ $(psql_ -c "SELECT pg_is_in_recovery()") == f ]] || { echo "$host is not the leader: switch over first"; exit 1; }
echo "max_connections $(psql_ -c 'SHOW max_connections'), payments $(psql_ -c "SELECT pg_size_pretty(pg_database_size('payments'))")"

n=0
for clients in ${COUNTS:-8 64 256 1024}; do
  for mode in direct pooled pooled direct; do
    n=$((n + 1))
    port=5432; [[ $mode == pooled ]] && port=6432
    label="$mode-$clients-$n"
    if CLIENTS=$clients BENCH_HOST=127.0.0.1 BENCH_PORT=$port BENCH_SSLMODE=require BENCH_LATENCY=1 \
        LABEL="$label" OUT="$out" bench/payment_workload.sh "$host" >"$out/$label.out" 2>&1; then
      printf '%-7s %5s clients: %s\n' "$mode" "$clients" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(d["iterations_per_s"], "it/s, p50", d["latency_p50_ms"], "ms, p99", d["latency_p99_ms"], "ms")' "$out/$label.json")"
    else
      reason=$(grep -m1 -oE "too many clients|remaining connection slots|FATAL:.*" "$out/$label.out" || echo failed)
      printf '%-7s %5s clients: refused (%s)\n' "$mode" "$clients" "$reason"
      python3 -c 'import json,sys; print(json.dumps({"clients": int(sys.argv[1]), "refused": sys.argv[2]}))' \
        "$clients" "$reason" >"$out/$label.json"
    fi
    sleep 2
  done
done
python3 bench/report.py clients "$out" docs/bench-clients.png

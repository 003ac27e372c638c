#!/usr/bin/env bash
# Payment workload on the lab primary: loads sample data (scale SCALE, once),
# then runs bench/payment.pgbench for DURATION seconds with CLIENTS clients,
# as the application's login (BENCH_USER / BENCH_PASSWORD: the lab's lab_app
# by default) over the local socket.
# BENCH_HOST/BENCH_PORT connect pgbench over TCP instead (to the pooler, say;
# BENCH_SSLMODE, BENCH_OPTIONS as PGSSLMODE and PGOPTIONS); BENCH_LATENCY=1
# logs every transaction and adds p50/p99 latencies; HISTORY=N makes N % of
# the iterations also open one past transaction (see bench/payment.pgbench).
# Writes bench/results/payment.json and prints it.
#   bench/payment_workload.sh [host] ; env: SCALE=1 CLIENTS=8 DURATION=30
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-pg-primary}
scale=${SCALE:-1} clients=${CLIENTS:-8} duration=${DURATION:-30}
label=${LABEL:-payment}
user=${BENCH_USER:-lab_app} password=${BENCH_PASSWORD:-lab-only-app-password-01}
db=${BENCH_DB:-payments} port=${BENCH_DATA_PORT:-5432}
bench_port=${BENCH_PORT:-$port}
out=${OUT:-bench/results}
mkdir -p "$out"
psql_() { docker exec -i "$host" runuser -u postgres -- psql -XAtq -p "$port" -d "$db" "$@"; }

have=$(psql_ -c "SELECT count(*) FROM payments.merchant WHERE name LIKE 'Sample merchant %'")
if (( have < 20 * scale )); then
  echo "loading sample data at scale $scale"
  psql_ -v scale="$scale" -f - < bench/sample_data.sql >/dev/null
fi
# Sample rows have contiguous ids (one INSERT each); other rows may sit around them.
read -r merchant_min merchants < <(psql_ -F ' ' -c "SELECT min(id), max(id) FROM payments.merchant WHERE name LIKE 'Sample merchant %'")
read -r method_min methods < <(psql_ -F ' ' -c "SELECT min(id), max(id) FROM payments.customer_payment_method WHERE token LIKE 'tok\_sample\_%'")
read -r rows tx_min tx_max < <(psql_ -F ' ' -c "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM payments.transaction")

docker exec -i "$host" sh -c 'cat > /var/tmp/payment.pgbench && chmod 644 /var/tmp/payment.pgbench' \
  < "${PGBENCH_FILE:-bench/payment.pgbench}"
# The server's own pgbench (its BINDIR), whatever the version.
bindir=$(psql_ -c "SELECT setting FROM pg_config WHERE name = 'BINDIR'")
socket=$(psql_ -c "SELECT split_part(current_setting('unix_socket_directories'), ',', 1)")
latency=()
if [[ ${BENCH_LATENCY:-0} == 1 ]]; then
  docker exec "$host" sh -c 'rm -rf /var/tmp/pgbench-log && mkdir -m 777 /var/tmp/pgbench-log'
  latency=(--log --log-prefix=/var/tmp/pgbench-log/tx)
fi
docker exec -e PGPASSWORD="$password" -e PGSSLMODE="${BENCH_SSLMODE:-prefer}" -e PGOPTIONS="${BENCH_OPTIONS:-}" \
  "$host" runuser -u postgres -- sh -c 'ulimit -n 8192 && exec "$0" "$@"' "$bindir/pgbench" -n "${latency[@]}" \
  -h "${BENCH_HOST:-$socket}" -p "$bench_port" -U "$user" -c "$clients" -j 2 -T "$duration" \
  -D merchant_min="$merchant_min" -D merchants="$merchants" -D method_min="$method_min" -D methods="$methods" \
  -D history="${HISTORY:-0}" -D tx_min="$tx_min" -D tx_max="$tx_max" \
  -f /var/tmp/payment.pgbench "$db" \
  >"$out/$label-pgbench.log" 2>&1 || { cat "$out/$label-pgbench.log"; exit 1; }

# Per-transaction latencies (microseconds, third field of pgbench's log).
percentiles='{}'
if [[ ${BENCH_LATENCY:-0} == 1 ]]; then
  percentiles=$(docker exec "$host" python3 -c '
import glob, json
lat = sorted(int(line.split()[2]) for f in glob.glob("/var/tmp/pgbench-log/tx*") for line in open(f))
pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1000, 2) if lat else None
print(json.dumps({"latency_p50_ms": pick(0.5), "latency_p99_ms": pick(0.99)}))')
fi

python3 - "$out/$label-pgbench.log" "$scale" "$clients" "$duration" "$rows" "$percentiles" >"$out/$label.json" <<'PY'
import json, re, sys
log, scale, clients, duration, rows = sys.argv[1], *map(int, sys.argv[2:6])
percentiles = json.loads(sys.argv[6])
text = open(log).read()
def num(pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None
print(json.dumps({
    "scale": scale, "transactions_before": rows, "clients": clients, "duration_s": duration,
    "iterations_per_s": num(r"tps = ([0-9.]+)"),
    "latency_avg_ms": num(r"latency average = ([0-9.]+) ms"),
    "failed": num(r"number of failed transactions: ([0-9]+)"),
    "processed": num(r"number of transactions actually processed: ([0-9]+)"),
    **percentiles,
}, indent=2))
PY
cat "$out/$label.json"

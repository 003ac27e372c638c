#!/usr/bin/env bash
# What the least-privilege payment API costs: the payment workload, as the
# application's login, against the schema before it (migrations up to
# BEFORE, the grants and payment script of commit BASE) and after it (every
# migration, today's grants), in two databases of one scratch cluster on the
# lab primary, runs in A B B A order. Writes bench/results/security_cost.json.
#   bench/security_cost.sh [host] ; env: BASE=e1ae3b5 BEFORE=12 CLIENTS=8 DURATION=20 SCALE=1
# The first ring: BASE=e1ae3b5 BEFORE=12 (the defaults). The second
# ring (issue 28): BASE=c4f117d BEFORE=18.
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-pg-primary}
base=${BASE:-e1ae3b5} before_version=${BEFORE:-12} port=5497 cluster=bench_security
export CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-20} SCALE=${SCALE:-1}
out=bench/results
login=bench_app password=bench-only-app-password-01
x() { docker exec -i "$host" "$@"; }
psql_() { x runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -p "$port" "$@"; }

# The scratch cluster has the lab server's major version (asked, not assumed).
major=$(x runuser -u postgres -- psql -XAtq -c "SELECT current_setting('server_version_num')::int / 10000")
trap 'x pg_dropcluster --stop "$major" "$cluster" >/dev/null 2>&1 || true' EXIT
x pg_dropcluster --stop "$major" "$cluster" >/dev/null 2>&1 || true
x pg_createcluster "$major" "$cluster" --port "$port" >/dev/null
# The application logs in with its password over the local socket.
hba=$(x pg_conftool -s "$major" "$cluster" show hba_file)
x sh -c "sed -i '1i local all $login scram-sha-256' $hba"
x pg_ctlcluster "$major" "$cluster" start

migrate() {  # database, newest version
  psql_ -d postgres -c "CREATE DATABASE $1"
  psql_ -d "$1" -c "CREATE SCHEMA pgops"
  for f in sql/migrations/V*.sql; do
    v=$((10#$(basename "$f" | cut -c2-5)))
    ((v <= $2)) || break
    if grep -q '^-- pgops: no-transaction' "$f"; then
      psql_ -d "$1" -f - <"$f" >/dev/null
    else
      # A migration holds a permit for protected DDL, as the runner's do (V0019).
      { echo "SET pgops.partition_interval = '1 month'; SET pgops.partition_premake = '4';"
        echo "DO \$\$ BEGIN IF to_regprocedure('pgops.permit_protected_ddl(text)') IS NOT NULL THEN"
        echo "PERFORM pgops.permit_protected_ddl('bench migration $(basename "$f")'); END IF; END \$\$;"
        cat "$f"; } \
        | psql_ -1 -d "$1" -f - >/dev/null
    fi
  done
}
newest=$(ls sql/migrations | tail -n 1 | cut -c2-5)
migrate before "$before_version"
migrate after "$((10#$newest))"
psql_ -d postgres -c "CREATE ROLE $login LOGIN PASSWORD '$password'"
# The grants of each version: V0009's reconciler with its configuration, or
# BASE's access role's, and today's with the access role's matrix.
config_at() {  # revision -> the reconciler's configuration (JSON) of that commit
  local tmp
  tmp=$(mktemp -d)
  git show "$1:roles/access/vars/main.yml" >"$tmp/vars.yml"
  git show "$1:roles/access/defaults/main.yml" >"$tmp/defaults.yml"
  .venv/bin/python -m pgops.privileges --config "$tmp/vars.yml" "$tmp/defaults.yml"
  rm -rf "$tmp"
}
if ((before_version > 12)); then
  psql_ -d before -c "SELECT pgops.reconcile_access('$(config_at "$base")')" >/dev/null
  psql_ -d before -c "INSERT INTO pgops.config VALUES ('pii_key_dir', '/etc/postgresql/pgops-pii'),
    ('pii_key_version', '1'), ('bcrypt_cost', '10')"
else
psql_ -d before -c "SELECT pgops.reconcile_access('{\"schema\": \"payments\", \"owner\": \"payments_owner\",
  \"admin\": \"admin\", \"developer\": \"developer\", \"readonly\": \"readonlyuser\", \"app\": \"payments_app\",
  \"pii\": \"pii_reader\", \"backup\": \"backup\", \"monitoring\": \"monitoring\", \"audit_tables\":
  [\"transaction_state_change\", \"refund\", \"fraud_assessment\", \"fraud_assessment_indicator\"],
  \"pii_functions\": [\"payments.pii_decrypt(bytea,integer)\"], \"definer_functions\": [\"payments.pii_key(integer)\",
  \"payments.pii_encrypt(text)\", \"payments.pii_decrypt(bytea,integer)\", \"payments.pii_reencrypt(integer)\"]}')" >/dev/null
psql_ -d before -c "ALTER DATABASE before SET pgops.pii_key_dir = '/etc/postgresql/pgops-pii'" \
  -c "ALTER DATABASE before SET pgops.pii_key_version = '1'"
fi
psql_ -d after -c "SELECT pgops.reconcile_access('$(config_at HEAD)')" >/dev/null
psql_ -d after -c "INSERT INTO pgops.config VALUES ('pii_key_dir', '/etc/postgresql/pgops-pii'),
  ('pii_key_version', '1'), ('bcrypt_cost', '10')"
psql_ -d postgres -c "GRANT payments_app TO $login"

git show "$base:bench/payment.pgbench" >/tmp/pgops-payment-before.pgbench
run() {  # label database script
  LABEL="security-$1" BENCH_DB="$2" BENCH_PORT=$port BENCH_DATA_PORT=$port BENCH_USER=$login BENCH_PASSWORD=$password \
    PGBENCH_FILE="$3" OUT=$out bash bench/payment_workload.sh "$host" >/dev/null
  cat "$out/security-$1.json"
}
a1=$(run before-1 before /tmp/pgops-payment-before.pgbench)
b1=$(run after-1 after bench/payment.pgbench)
b2=$(run after-2 after bench/payment.pgbench)
a2=$(run before-2 before /tmp/pgops-payment-before.pgbench)
rm -f /tmp/pgops-payment-before.pgbench "$out"/security-*.json "$out"/security-*-pgbench.log
python3 - "$a1" "$b1" "$b2" "$a2" "$base" >"$out/security_cost.json" <<'PY'
import json, statistics, sys
a1, b1, b2, a2 = (json.loads(x) for x in sys.argv[1:5])
before = [a1["iterations_per_s"], a2["iterations_per_s"]]
after = [b1["iterations_per_s"], b2["iterations_per_s"]]
print(json.dumps({
    "order": "A B B A", "base_commit": sys.argv[5], "clients": a1["clients"], "duration_s": a1["duration_s"],
    "before_iterations_per_s": before, "after_iterations_per_s": after,
    "before_median": statistics.median(before), "after_median": statistics.median(after),
    "ratio_after_to_before": round(statistics.median(after) / statistics.median(before), 3),
    "failed": [x["failed"] for x in (a1, b1, b2, a2)],
}, indent=2))
PY
cat "$out/security_cost.json"

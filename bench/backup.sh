#!/usr/bin/env bash
# Backup and restore throughput on the lab: loads sample data at SCALE (once),
# then times the nightly logical backup (pg_dump + upload + verify, on the
# primary), a base backup (barman-cloud), a logical restore and a
# point-in-time restore into a new cluster on the last member.
#   bench/backup.sh ; env: SCALE=5
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
scale=${SCALE:-5}
out=bench/results
primary=
for h in pg-primary pg-standby pg-standby2; do
  if [[ $(docker exec "$h" runuser -u postgres -- psql -XAtq -c 'SELECT pg_is_in_recovery()' 2>/dev/null) == f ]]; then
    primary=$h; break
  fi
done
[[ -n $primary ]] || { echo "no primary in the lab" >&2; exit 1; }
target=pg-standby2
[[ $primary == "$target" ]] && target=pg-standby
psql_() { docker exec -i "$primary" runuser -u postgres -- psql -XAtq -d payments "$@"; }
have=$(psql_ -c "SELECT count(*) FROM payments.merchant WHERE name LIKE 'Sample merchant %'")
if (( have < 20 * scale )); then
  psql_ -v scale=$(( scale - have / 20 )) -f - < bench/sample_data.sql >/dev/null
fi
db_mb=$(psql_ -c "SELECT round(pg_database_size('payments') / 1048576.0, 1)")
cluster_mb=$(psql_ -c "SELECT round(sum(pg_database_size(datname)) / 1048576.0, 1) FROM pg_database")
rows=$(psql_ -c "SELECT count(*) FROM payments.transaction")
secs() {  # seconds a command takes (it must succeed)
  python3 -c 'import subprocess, sys, time
t = time.monotonic(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(round(time.monotonic() - t, 2))' "$@"
}

dump_s=$(secs docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-backup run)
dump_mb=$(docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-backup list | head -n 1 \
  | awk '{printf "%.1f", $3 / 1048576}')
base_s=$(secs docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-barman nightly)
sleep 2
docker exec "$primary" runuser -u postgres -- psql -XAtq -c 'SELECT pg_switch_wal()' >/dev/null
sleep 5
logical_s=$(secs ansible-playbook -i inventories/lab playbooks/restore.yml -e restore_host=$target \
  -e restore_cluster=bench -e restore_port=5440 -e restore_force=true)
pitr_s=$(secs ansible-playbook -i inventories/lab playbooks/restore.yml -e restore_host=$target \
  -e restore_mode=pitr -e restore_cluster=benchpitr -e restore_port=5441 -e restore_force=true)
docker exec "$target" sh -c 'pg_dropcluster --stop 15 bench; pg_dropcluster --stop 15 benchpitr' || true

python3 - "$scale" "$db_mb" "$cluster_mb" "$rows" "$dump_mb" "$dump_s" "$base_s" "$logical_s" "$pitr_s" \
  >"$out/backup.json" <<'PY'
import json, sys
scale, db_mb, cluster_mb, rows, dump_mb, dump_s, base_s, logical_s, pitr_s = sys.argv[1:]
f = float
print(json.dumps({
    "scale": int(scale), "transactions": int(rows), "database_mb": f(db_mb), "cluster_mb": f(cluster_mb),
    "dump_mb": f(dump_mb), "logical_backup_s": round(f(dump_s), 1),
    "logical_backup_mb_per_s": round(f(db_mb) / f(dump_s), 1),
    "base_backup_s": round(f(base_s), 1), "base_backup_mb_per_s": round(f(cluster_mb) / f(base_s), 1),
    "logical_restore_s": round(f(logical_s), 1), "pitr_restore_s": round(f(pitr_s), 1),
}, indent=2))
PY
cat "$out/backup.json"

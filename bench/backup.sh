#!/usr/bin/env bash
# Backup and restore throughput on the lab, in one run: loads sample data at
# SCALE (once), then on the member whose turn it is to back up (a streaming
# standby) alternates (raw, pgbackrest, pgbackrest, raw) x ROUNDS:
#   raw         an uncompressed tar of the data directory (without pg_wal,
#               which a backup does not copy either) streamed to the same S3
#               endpoint with boto3 (multipart, one stream): the lab's raw
#               upload throughput, what the backup is measured against
#   pgbackrest  a full backup as the timer takes it (pgops-pgbackrest-full:
#               zst, encrypted, process-max from the CPUs, from the standby)
# then the nightly logical backup (pg_dump + upload + verify, on the primary),
# a logical restore and a point-in-time restore of the latest backup into a
# new cluster on another member. Throughput is MB of database per second.
#   bench/backup.sh ; env: SCALE=5 ROUNDS=1
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
scale=${SCALE:-5} rounds=${ROUNDS:-1}
out=bench/results/backup
mkdir -p "$out"
primary=
for h in pg-primary pg-standby pg-standby2; do
  if [[ $(docker exec "$h" runuser -u postgres -- psql -XAtq -c 'SELECT pg_is_in_recovery()' 2>/dev/null) == f ]]; then
    primary=$h; break
  fi
done
[[ -n $primary ]] || { echo "no primary in the lab" >&2; exit 1; }
turn=$(docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-pgbackrest turn)
target=pg-standby2
[[ $target == "$primary" || $target == "$turn" ]] && target=pg-standby
[[ $target == "$primary" || $target == "$turn" ]] && target=pg-primary
psql_() { docker exec -i "$primary" runuser -u postgres -- psql -XAtq -d payments "$@"; }
have=$(psql_ -c "SELECT count(*) FROM payments.merchant WHERE name LIKE 'Sample merchant %'")
if (( have < 20 * scale )); then
  psql_ -v scale=$(( scale - have / 20 )) -f - < bench/sample_data.sql >/dev/null
fi
psql_ -c "CHECKPOINT" >/dev/null
db_mb=$(psql_ -c "SELECT round(pg_database_size('payments') / 1048576.0, 1)")
cluster_mb=$(psql_ -c "SELECT round(sum(pg_database_size(datname)) / 1048576.0, 1) FROM pg_database")
rows=$(psql_ -c "SELECT count(*) FROM payments.transaction")
major=$(psql_ -c "SELECT current_setting('server_version_num')::int / 10000")
datadir=$(docker exec "$turn" runuser -u postgres -- psql -XAtq -c 'SHOW data_directory')
secs() {  # seconds a command takes (it must succeed)
  python3 -c 'import subprocess, sys, time
t = time.monotonic(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(round(time.monotonic() - t, 2))' "$@"
}
# The raw upload: tar (no compression) piped into boto3's upload_fileobj, with
# the backup role's S3 settings (keys, endpoint, CA) as the postgres user has them.
raw_upload() {
  docker exec "$turn" runuser -u postgres -- sh -c "tar -C '$datadir' --exclude=./pg_wal -cf - . 2>/dev/null | \
    AWS_CONFIG_FILE=\$HOME/.aws/config AWS_SHARED_CREDENTIALS_FILE=\$HOME/.aws/credentials python3 -c '
import json, sys, boto3
cfg = json.load(open(\"/etc/pgops/backup.json\"))
s3 = boto3.client(\"s3\", endpoint_url=cfg[\"endpoint_url\"] or None, region_name=cfg[\"region\"])
s3.upload_fileobj(sys.stdin.buffer, cfg[\"bucket\"], cfg[\"prefix\"] + \"/bench/raw.tar\")
s3.delete_object(Bucket=cfg[\"bucket\"], Key=cfg[\"prefix\"] + \"/bench/raw.tar\")'"
}
export -f raw_upload
export turn datadir

runs=()
for ((r = 1; r <= rounds; r++)); do
  for kind in raw pgbackrest pgbackrest raw; do
    if [[ $kind == raw ]]; then
      s=$(secs bash -c raw_upload)
    else
      s=$(secs docker exec "$turn" systemctl start pgops-pgbackrest-full.service)
    fi
    echo "$kind: ${s} s"
    runs+=("$kind:$s")
  done
done
label=$(docker exec "$turn" runuser -u postgres -- pgbackrest --stanza=payments --output=json info \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])')
repo_mb=$(docker exec "$turn" runuser -u postgres -- pgbackrest --stanza=payments --output=json --set="$label" info \
  | python3 -c 'import json, sys; b = json.load(sys.stdin)[0]["backup"][-1]; print(round(b["info"]["repository"]["delta"] / 1048576, 1))')

dump_s=$(secs docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-backup run)
dump_mb=$(docker exec "$primary" runuser -u postgres -- /usr/local/sbin/pgops-backup list | head -n 1 \
  | awk '{printf "%.1f", $3 / 1048576}')
docker exec "$primary" runuser -u postgres -- psql -XAtq -c 'SELECT pg_switch_wal()' >/dev/null
sleep 5
logical_s=$(secs ansible-playbook -i inventories/lab playbooks/restore.yml -e restore_host=$target \
  -e restore_cluster=bench -e restore_port=5440 -e restore_force=true)
docker exec "$target" pg_dropcluster --stop "$major" bench || true
pitr_s=$(secs ansible-playbook -i inventories/lab playbooks/restore.yml -e restore_host=$target \
  -e restore_mode=pitr -e restore_cluster=benchpitr -e restore_port=5441)
docker exec "$target" pg_dropcluster --stop "$major" benchpitr || true

python3 - "$scale" "$db_mb" "$cluster_mb" "$rows" "$dump_mb" "$dump_s" "$logical_s" "$pitr_s" "$repo_mb" \
  "${runs[@]}" >"$out/backup.json" <<'PY'
import json, statistics, sys
scale, db_mb, cluster_mb, rows, dump_mb, dump_s, logical_s, pitr_s, repo_mb = sys.argv[1:10]
f = float
runs = {}
for r in sys.argv[10:]:
    kind, s = r.split(":")
    runs.setdefault(kind, []).append(f(s))
mbps = {k: [round(f(cluster_mb) / s, 1) for s in v] for k, v in runs.items()}
print(json.dumps({
    "scale": int(scale), "transactions": int(rows), "database_mb": f(db_mb), "cluster_mb": f(cluster_mb),
    "raw_upload_s": runs["raw"], "full_backup_s": runs["pgbackrest"],
    "raw_upload_mb_per_s": {"median": statistics.median(mbps["raw"]), "max": max(mbps["raw"]), "runs": mbps["raw"]},
    "full_backup_mb_per_s": {"median": statistics.median(mbps["pgbackrest"]), "max": max(mbps["pgbackrest"]),
                             "runs": mbps["pgbackrest"]},
    "full_backup_to_raw": round(statistics.median(mbps["pgbackrest"]) / statistics.median(mbps["raw"]), 2),
    "full_backup_to_barman_4_2": round(statistics.median(mbps["pgbackrest"]) / 4.2, 1),
    "full_backup_repository_mb": f(repo_mb),
    "dump_mb": f(dump_mb), "logical_backup_s": round(f(dump_s), 1),
    "logical_backup_mb_per_s": round(f(db_mb) / f(dump_s), 1),
    "logical_restore_s": round(f(logical_s), 1), "pitr_restore_s": round(f(pitr_s), 1),
}, indent=2))
PY
cat "$out/backup.json"
python3 bench/report.py backup "$out/backup.json" docs/bench-backup.png

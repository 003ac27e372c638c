#!/usr/bin/env bash
# make psql: an interactive psql as the lab's read-only user (lab_reader),
# over TLS with the server verified, through the readers' multi-host string
# (a standby when one runs). psql runs in the first lab container that is up.
#   lab/psql.sh [extra psql arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
read -r hosts addresses password < <(.venv/bin/python - <<'PY'
import yaml
hosts = yaml.safe_load(open("inventories/lab/hosts.yml"))["all"]["children"]["postgresql"]["hosts"]
users = yaml.safe_load(open("inventories/lab/group_vars/postgresql.yml"))["access_users"]
reader = next(u for u in users if u["name"] == "lab_reader")
print(",".join(hosts), ",".join(h["lab_ip"] for h in hosts.values()), reader["password"])
PY
)
for host in ${hosts//,/ }; do
  if ca=$(docker exec "$host" runuser -u postgres -- psql -XAtq -c "SHOW ssl_ca_file" 2>/dev/null); then
    tty=(); [[ -t 0 ]] && tty=(-t)
    exec docker exec -i "${tty[@]}" -e PGPASSWORD="$password" "$host" psql \
      "host=$addresses dbname=payments user=lab_reader sslmode=verify-full sslrootcert=$ca target_session_attrs=prefer-standby" "$@"
  fi
done
echo "no lab member answers: make lab" >&2
exit 1

#!/usr/bin/env bash
# Fresh converge vs idempotent re-run of site.yml on the lab.
# Destroys the lab containers, recreates them, then times:
#   containers  - creating the systemd containers until they have booted
#   fresh       - first site.yml run (packages, cluster, TLS, config)
#   rerun       - second site.yml run, which must report changed=0
# Writes bench/results/converge.json and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg ANSIBLE_NOCOLOR=1
inv=inventories/lab
out=bench/results
mkdir -p "$out"
now() { date +%s.%N; }

ansible-playbook -i "$inv" playbooks/lab.yml -e lab_state=absent >/dev/null
t0=$(now)
ansible-playbook -i "$inv" playbooks/lab.yml >/dev/null
t1=$(now)
ansible-playbook -i "$inv" site.yml >"$out/converge-fresh.log"
t2=$(now)
ansible-playbook -i "$inv" site.yml >"$out/converge-rerun.log"
t3=$(now)

if grep -E '^\S+\s+: ok=[0-9]+\s+changed=[1-9]' "$out/converge-rerun.log"; then
  echo "re-run was not idempotent" >&2; exit 1
fi
hosts=$(grep -cE '^\S+\s+: ok=' "$out/converge-rerun.log")
python3 - "$t0" "$t1" "$t2" "$t3" "$hosts" "$(nproc)" >"$out/converge.json" <<'PY'
import json, sys
t0, t1, t2, t3 = map(float, sys.argv[1:5])
fresh, rerun = t2 - t1, t3 - t2
print(json.dumps({
    "hosts": int(sys.argv[5]), "cpus": int(sys.argv[6]),
    "containers_s": round(t1 - t0, 1), "fresh_site_s": round(fresh, 1),
    "fresh_deploy_s": round(t2 - t0, 1), "rerun_s": round(rerun, 1),
    "rerun_vs_fresh_pct": round(100 * rerun / fresh, 1),
}, indent=2))
PY
cat "$out/converge.json"

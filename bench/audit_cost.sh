#!/usr/bin/env bash
# Cost of the audit settings on the payment workload (lab primary): the
# source document's defaults (log_connections, log_disconnections,
# log_statement=all, plus pgaudit), pgaudit only (DDL, role changes and
# writes to the sensitive tables), and no audit logging at all. Each setting
# is applied through the audit role, measured with bench/payment_workload.sh,
# and the lab's own settings are restored at the end.
#   bench/audit_cost.sh ; env: CLIENTS=8 DURATION=30
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
host=pg-primary
out=bench/results
declare -A modes=(
  [source_defaults]='{}'
  [pgaudit_only]='{"audit_log_statement": "none", "audit_log_connections": false, "audit_log_disconnections": false}'
  [no_audit]=@bench/audit-off.json
)
restore() { ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" >/dev/null; }
trap restore EXIT
export DURATION=${DURATION:-20}
# A B C C B A: drift over the runs (tables grow, caches warm) cancels out.
round=0
for mode in source_defaults pgaudit_only no_audit no_audit pgaudit_only source_defaults; do
  round=$((round + 1))
  ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" -e "${modes[$mode]}" >/dev/null
  LABEL="audit-$mode-$round" bench/payment_workload.sh "$host" >/dev/null
  echo "$mode: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["iterations_per_s"], "it/s,", d["latency_avg_ms"], "ms")' "$out/audit-$mode-$round.json")"
done
python3 - "$out" >"$out/audit_cost.json" <<'PY'
import glob, json, sys
out = sys.argv[1]
runs = {}
for m in ("source_defaults", "pgaudit_only", "no_audit"):
    got = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/audit-{m}-*.json"))]
    runs[m] = {"iterations_per_s": round(sum(r["iterations_per_s"] for r in got) / len(got), 1),
               "latency_avg_ms": round(sum(r["latency_avg_ms"] for r in got) / len(got), 2),
               "runs": [round(r["iterations_per_s"], 1) for r in got]}
base = runs["no_audit"]["iterations_per_s"]
for r in runs.values():
    r["vs_no_audit_pct"] = round(100 * (r["iterations_per_s"] / base - 1), 1)
print(json.dumps(runs, indent=2))
PY
cat "$out/audit_cost.json"

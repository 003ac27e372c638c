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
  [no_audit]='{"audit_log_statement": "none", "audit_log_connections": false, "audit_log_disconnections": false,
               "audit_pgaudit_log": ["none"], "audit_parameters": {"pgaudit.role": ""}}'
)
restore() { ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" >/dev/null; }
trap restore EXIT
for mode in source_defaults pgaudit_only no_audit; do
  ansible-playbook -i inventories/lab playbooks/audit.yml -l "$host" -e "${modes[$mode]}" >/dev/null
  LABEL="audit-$mode" bench/payment_workload.sh "$host" >/dev/null
  echo "$mode: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["iterations_per_s"], "it/s,", d["latency_avg_ms"], "ms")' "$out/audit-$mode.json")"
done
python3 - "$out" >"$out/audit_cost.json" <<'PY'
import json, sys
out = sys.argv[1]
runs = {m: json.load(open(f"{out}/audit-{m}.json")) for m in ("source_defaults", "pgaudit_only", "no_audit")}
base = runs["no_audit"]["iterations_per_s"]
print(json.dumps({m: {"iterations_per_s": r["iterations_per_s"], "latency_avg_ms": r["latency_avg_ms"],
                      "vs_no_audit_pct": round(100 * (r["iterations_per_s"] / base - 1), 1)}
                  for m, r in runs.items()}, indent=2))
PY
cat "$out/audit_cost.json"

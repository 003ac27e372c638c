#!/usr/bin/env bash
# What monitoring costs the payment workload: the lab as deployed, with every
# exporter on every member (PostgreSQL, node, mtail over the audit log) and
# Prometheus scraping them and Patroni, against the same lab with all of that
# stopped. Runs in A B B A order (A: off, B: on) on the current leader, each
# after WARMUP unmeasured seconds. Writes bench/results/monitoring/cost.json and
# docs/bench-monitoring.png, and prints a table.
#   bench/monitoring_cost.sh ; env: CLIENTS=8 DURATION=40 WARMUP=5 SCALE=1
set -euo pipefail
cd "$(dirname "$0")/.."
export CLIENTS=${CLIENTS:-8} SCALE=${SCALE:-1}
duration=${DURATION:-40} warmup=${WARMUP:-5}
out=bench/results/monitoring
members=(pg-primary pg-standby pg-standby2) monitor=pg-monitor
exporters="prometheus-postgres-exporter prometheus-node-exporter mtail"
mkdir -p "$out"

leader=$(for m in "${members[@]}"; do
  [[ $(docker exec "$m" runuser -u postgres -- psql -XAtq -c "SELECT pg_is_in_recovery()") == f ]] && echo "$m"
done)
[[ -n $leader ]] || { echo "no leader among ${members[*]}" >&2; exit 1; }
echo "leader: $leader"

monitoring() {  # start | stop
  for m in "${members[@]}"; do docker exec "$m" systemctl "$1" $exporters; done
  docker exec "$monitor" systemctl "$1" prometheus
}
# Whatever happens, monitoring is left running.
trap 'monitoring start' EXIT

run() {  # label
  DURATION=$warmup LABEL="warmup" OUT=$out bash bench/payment_workload.sh "$leader" >/dev/null
  DURATION=$duration LABEL="$1" OUT=$out bash bench/payment_workload.sh "$leader" >/dev/null
  echo "$1: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["iterations_per_s"])' "$out/$1.json") it/s"
}
monitoring stop; run off-1
monitoring start; sleep 20; run on-1; run on-2
monitoring stop; run off-2
monitoring start

.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {k: json.loads((out / f"{k}.json").read_text()) for k in ("off-1", "on-1", "on-2", "off-2")}
off = [runs["off-1"]["iterations_per_s"], runs["off-2"]["iterations_per_s"]]
on = [runs["on-1"]["iterations_per_s"], runs["on-2"]["iterations_per_s"]]
summary = {
    "order": "off on on off", "clients": runs["off-1"]["clients"], "duration_s": runs["off-1"]["duration_s"],
    "off_iterations_per_s": off, "on_iterations_per_s": on,
    "off_median": statistics.median(off), "on_median": statistics.median(on),
    "off_max": max(off), "on_max": max(on),
    "ratio_on_to_off": round(statistics.median(on) / statistics.median(off), 3),
    "failed": [r["failed"] for r in runs.values()],
}
(out / "cost.json").write_text(json.dumps(summary, indent=2) + "\n")
print("| Monitoring | Median it/s | Max | Runs | Ratio |\n| --- | ---: | ---: | --- | ---: |")
print(f"| off | {summary['off_median']:.1f} | {max(off):.1f} | {off[0]:.1f}, {off[1]:.1f} | 1.0 |")
print(f"| on | {summary['on_median']:.1f} | {max(on):.1f} | {on[0]:.1f}, {on[1]:.1f} | {summary['ratio_on_to_off']} |")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3.2))
for x, (label, values) in enumerate((("monitoring off", off), ("monitoring on", on))):
    ax.bar(x, statistics.median(values), color="#9ecae1" if x == 0 else "#3182bd", width=0.6)
    ax.plot([x, x], values, "ko", markersize=4)
ax.set_xticks([0, 1], ["monitoring off", "monitoring on"])
ax.set_ylabel("payment iterations/s (median, runs as dots)")
ax.set_title(f"Monitoring overhead: {summary['ratio_on_to_off']}x ({summary['clients']} clients, A B B A)")
fig.tight_layout()
fig.savefig("docs/bench-monitoring.png", dpi=110)
PY

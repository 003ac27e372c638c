#!/usr/bin/env bash
# What monitoring costs the payment workload on the database hosts: the lab
# as deployed, every exporter on every member (PostgreSQL, node, mtail over
# the audit log, PgBouncer's) scraped by Prometheus, against the same lab with the
# exporters stopped. Prometheus keeps running in both (in production it is on
# another host; here its scrapes of stopped exporters fail at once). Also
# reports the CPU the exporters' processes used during the "on" runs, as
# a share of the host's CPU, which does not depend on the workload's noise. Runs in A B B A order (A: off, B: on), ROUNDS times, on the
# current leader, each once the lab has archived and replayed the WAL of the
# one before, and after WARMUP unmeasured seconds. Writes bench/results/monitoring/cost.json and
# docs/bench-monitoring.png, and prints a table.
#   bench/monitoring_cost.sh ; env: CLIENTS=8 DURATION=40 WARMUP=5 ROUNDS=2 SCALE=1
set -euo pipefail
cd "$(dirname "$0")/.."
export CLIENTS=${CLIENTS:-8} SCALE=${SCALE:-1}
duration=${DURATION:-40} warmup=${WARMUP:-5} rounds=${ROUNDS:-2}
out=bench/results/monitoring
members=(pg-primary pg-standby pg-standby2) exporters="prometheus-postgres-exporter prometheus-node-exporter mtail pgops-pgbouncer-exporter"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.cpu_ms
# shellcheck source=bench/lib.sh
source bench/lib.sh

leader=$(for m in "${members[@]}"; do
  [[ $(docker exec "$m" runuser -u postgres -- psql -XAtq -c "SELECT pg_is_in_recovery()") == f ]] && echo "$m"
done)
[[ -n $leader ]] || { echo "no leader among ${members[*]}" >&2; exit 1; }
echo "leader: $leader"

monitoring() {  # start | stop
  for m in "${members[@]}"; do docker exec "$m" systemctl "$1" $exporters; done
}
exporter_cpu_ms() {  # the exporters' processes' CPU time on the leader so far (user + system)
  docker exec "$leader" sh -c 'for u in '"$exporters"'; do cat /proc/$(systemctl show -p MainPID --value $u)/stat; done' \
    | awk -v hz="$(getconf CLK_TCK)" '{s += $14 + $15} END {printf "%d", s * 1000 / hz}'
}
# Whatever happens, monitoring is left running.
trap 'monitoring start' EXIT

run() {  # label
  settle "$leader"
  DURATION=$warmup LABEL="warmup" OUT=$out bash bench/payment_workload.sh "$leader" >/dev/null
  local before=0 after=0
  # The exporters' CPU, while they run (a failed read stops the benchmark).
  [[ $1 == on-* ]] && before=$(exporter_cpu_ms)
  DURATION=$duration LABEL="$1" OUT=$out bash bench/payment_workload.sh "$leader" >/dev/null
  [[ $1 == on-* ]] && after=$(exporter_cpu_ms)
  echo "$((after - before))" >"$out/$1.cpu_ms"
  echo "$1: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["iterations_per_s"])' "$out/$1.json") it/s"
}
for ((r = 1; r <= rounds; r++)); do
  monitoring stop; run "off-$r-a"
  monitoring start; sleep 20; run "on-$r-a"; run "on-$r-b"
  monitoring stop; run "off-$r-b"
done
monitoring start

.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("o*-*.json"))}
off = [r["iterations_per_s"] for k, r in runs.items() if k.startswith("off-")]
on = [r["iterations_per_s"] for k, r in runs.items() if k.startswith("on-")]
first = next(iter(runs.values()))
cpus = int(open("/proc/cpuinfo").read().count("processor\t:"))
cpu_ms = [int((out / f"{k}.cpu_ms").read_text()) for k in runs if k.startswith("on-")]
cpu_share = statistics.median(cpu_ms) / (first["duration_s"] * 1000 * cpus)
summary = {
    "order": "(off on on off) x rounds", "clients": first["clients"], "duration_s": first["duration_s"],
    "off_iterations_per_s": off, "on_iterations_per_s": on,
    "off_median": statistics.median(off), "on_median": statistics.median(on),
    "off_max": max(off), "on_max": max(on),
    "ratio_on_to_off": round(statistics.median(on) / statistics.median(off), 3),
    "failed": [r["failed"] for r in runs.values()],
    "exporter_cpu_ms_per_on_run": cpu_ms, "host_cpus": cpus,
    "exporter_cpu_share_of_host": round(cpu_share, 4),
}
(out / "cost.json").write_text(json.dumps(summary, indent=2) + "\n")
print("| Monitoring | Median it/s | Max | Runs | Ratio |\n| --- | ---: | ---: | --- | ---: |")
print(f"| off | {summary['off_median']:.1f} | {max(off):.1f} | {', '.join(f'{x:.1f}' for x in off)} | 1.0 |")
on_runs = ", ".join(f"{x:.1f}" for x in on)
print(f"| on | {summary['on_median']:.1f} | {max(on):.1f} | {on_runs} | {summary['ratio_on_to_off']} |")
print(f"exporters on the leader: {statistics.median(cpu_ms)} ms of CPU per {first['duration_s']} s run (median), "
      f"{100 * cpu_share:.2f} % of its {cpus} CPUs")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3.2))
for x, (label, values) in enumerate((("monitoring off", off), ("monitoring on", on))):
    ax.bar(x, statistics.median(values), color="#9ecae1" if x == 0 else "#3182bd", width=0.6)
    ax.plot([x] * len(values), values, "ko", markersize=4)
ax.set_xticks([0, 1], ["monitoring off", "monitoring on"])
ax.set_ylabel("payment iterations/s (median, runs as dots)")
ax.set_title(f"Exporters on: {summary['ratio_on_to_off']}x throughput, {100 * cpu_share:.1f} % CPU", fontsize=10)
fig.tight_layout()
fig.savefig("docs/bench-monitoring.png", dpi=110)
PY

"""The monitoring dashboard, defined once: the Grafana dashboard JSON users
import, and the PNG report `make report` renders from Prometheus's HTTP API
for people without Grafana (the lab, the README). Both show the same panels,
from the same PromQL.

    python -m pgops.dashboard grafana OUT.json
    python -m pgops.dashboard report PROMETHEUS_URL OUT.png [--hours 1]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str  # Grafana's unit id
    axis: str  # the PNG's y-axis label
    legend: str  # Grafana legend format; the PNG uses the same labels

    def label(self, metric: dict[str, str]) -> str:
        out = self.legend
        for key, value in metric.items():
            out = out.replace("{{" + key + "}}", value)
        return out


PANELS = [
    Panel(
        "Transactions per second (payments)",
        'sum by (member) (rate(pg_stat_database_xact_commit{datname="payments"}[1m]))',
        "ops", "commits/s", "{{member}}",
    ),
    Panel(
        "Server time per transaction (payments)",
        'sum by (member) (rate(pg_stat_database_active_time{datname="payments"}[1m]))'
        ' / sum by (member) (rate(pg_stat_database_xact_commit{datname="payments"}[1m]) > 0)',
        "ms", "ms per commit", "{{member}}",
    ),
    Panel(
        "Replication lag (replay)",
        "max by (member, application_name) (pgops_replication_replay_lag_seconds)",
        "s", "seconds", "{{application_name}}",
    ),
    Panel(
        "WAL written",
        'rate(patroni_xlog_location{job="patroni"}[1m]) and on (instance) patroni_primary == 1',
        "Bps", "bytes/s", "{{member}}",
    ),
    Panel(
        "Age of the last archived WAL",
        "max by (member) (pgops_archiver_last_archived_age_seconds)",
        "s", "seconds", "{{member}}",
    ),
    Panel(
        "Age of the last good backup",
        "time() - max by (kind) (pgops_backup_last_success_timestamp_seconds)",
        "s", "seconds", "{{kind}}",
    ),
    Panel(
        "Clients served by PgBouncer (payments)",
        'sum by (member) (pgbouncer_pools_client_active_connections{database="payments"})',
        "short", "clients", "{{member}}",
    ),
    Panel(
        "Connections by state",
        'sum by (state) (pgops_connections_count{usename!=""})',
        "short", "connections", "{{state}}",
    ),
]  # fmt: skip


def grafana(panels: list[Panel] = PANELS) -> dict:
    """A Grafana dashboard (schema 39) with one time-series panel per Panel,
    two per row, reading a Prometheus data source chosen at import."""
    source = {"type": "prometheus", "uid": "${datasource}"}
    return {
        "title": "pgops: PostgreSQL cluster",
        "uid": "pgops-cluster",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "tags": ["pgops", "postgresql"],
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": [
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": source,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": "A", "datasource": source, "expr": p.expr, "legendFormat": p.legend}],
            }
            for i, p in enumerate(panels)
        ],
    }


def query_range(base_url: str, expr: str, start: float, end: float, step: int) -> list[dict]:
    url = f"{base_url.rstrip('/')}/api/v1/query_range?" + urlencode(
        {"query": expr, "start": start, "end": end, "step": step}
    )
    with urlopen(url, timeout=30) as response:  # noqa: S310 (an http(s) URL the operator gives)
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    return body["data"]["result"]


def report(base_url: str, png: Path, hours: float = 1.0, panels: list[Panel] = PANELS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - hours * 3600
    step = max(15, int(hours * 3600 / 240))
    fig, axes = plt.subplots((len(panels) + 1) // 2, 2, figsize=(12, 3 * ((len(panels) + 1) // 2)))
    for ax, panel in zip(axes.flat, panels, strict=False):
        series = query_range(base_url, panel.expr, start, end, step)
        for s in series:
            xs, ys, last = [], [], None
            for t, v in s["values"]:
                if last is not None and float(t) - last > 2 * step:  # a gap: no line across it
                    xs.append(datetime.fromtimestamp(last + step, tz=UTC))
                    ys.append(float("nan"))
                xs.append(datetime.fromtimestamp(float(t), tz=UTC))
                ys.append(float(v))
                last = float(t)
            ax.plot(xs, ys, label=panel.label(s["metric"]) or panel.title, linewidth=1.2)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.axis, fontsize=8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
        ax.tick_params(labelsize=8)
        if series:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    stamp = datetime.fromtimestamp(end, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"pgops cluster, last {hours:g} h to {stamp} ({base_url})", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "grafana":
        Path(argv[2]).write_text(json.dumps(grafana(), indent=2) + "\n")
        return 0
    if len(argv) in (4, 6) and argv[1] == "report":
        hours = float(argv[5]) if len(argv) == 6 and argv[4] == "--hours" else 1.0
        report(argv[2], Path(argv[3]), hours)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

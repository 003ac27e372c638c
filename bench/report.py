"""Tables and plots of bench/layers.sh and bench/clients.sh.

    python bench/report.py layers bench/results/layers docs/bench-layers.png
    python bench/report.py clients bench/results/clients docs/bench-clients.png

Each prints a Markdown table (medians, maxima, ratios) and writes
<dir>/summary.json and the PNG.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

LAYERS = {
    "1-stock": "stock PostgreSQL",
    "2-tuned": "role's tuning (single server)",
    "3-audit": "+ audit defaults (single server)",
    "4-sync": "the 3-member lab (+ synchronous replication)",
    "5-pgbouncer": "+ PgBouncer",
    "6-haproxy": "+ HAProxy",
}


def load(directory: Path) -> list[tuple[str, dict]]:
    runs = []
    for path in sorted(directory.glob("*.json")):
        if path.name == "summary.json":
            continue
        runs.append((re.sub(r"-\d+$", "", path.stem), json.loads(path.read_text())))
    return runs


def layers_summary(runs: list[tuple[str, dict]]) -> dict:
    by_layer: dict[str, list[float]] = {}
    for label, run in runs:
        by_layer.setdefault(label, []).append(run["iterations_per_s"])
    base = statistics.median(by_layer["1-stock"])
    return {
        layer: {
            "name": LAYERS[layer],
            "runs": [round(v, 1) for v in values],
            "median": round(statistics.median(values), 1),
            "max": round(max(values), 1),
            "ratio_to_stock": round(statistics.median(values) / base, 3),
        }
        for layer, values in sorted(by_layer.items())
    }


def clients_summary(runs: list[tuple[str, dict]]) -> dict:
    out: dict[str, dict] = {}
    for label, run in runs:
        mode, clients = label.rsplit("-", 1)
        entry = out.setdefault(f"{mode}-{int(clients):04d}", {"mode": mode, "clients": int(clients), "runs": []})
        entry["runs"].append(run)
    for entry in out.values():
        ok = [r for r in entry["runs"] if "refused" not in r and r.get("iterations_per_s")]
        entry["refused"] = len(entry["runs"]) - len(ok)
        if ok:
            entry["median"] = round(statistics.median(r["iterations_per_s"] for r in ok), 1)
            entry["max"] = round(max(r["iterations_per_s"] for r in ok), 1)
            entry["p50_ms"] = round(statistics.median(r["latency_p50_ms"] for r in ok), 2)
            entry["p99_ms"] = round(max(r["latency_p99_ms"] for r in ok), 2)
            entry["failed"] = sum(r.get("failed") or 0 for r in ok)
        del entry["runs"]
    pooled = [e["median"] for e in out.values() if e["mode"] == "pooled" and "median" in e]
    best = max(pooled) if pooled else None
    for entry in out.values():
        if entry["mode"] == "pooled" and best and "median" in entry:
            entry["ratio_to_best_pooled"] = round(entry["median"] / best, 3)
    return dict(sorted(out.items()))


def layers_table(summary: dict) -> str:
    lines = ["| Layer | Median it/s | Max it/s | Ratio to stock | Runs |", "| --- | ---: | ---: | ---: | --- |"]
    for layer, s in summary.items():
        lines.append(
            f"| {layer[0]} {s['name']} | {s['median']} | {s['max']} | {s['ratio_to_stock']} | "
            f"{', '.join(map(str, s['runs']))} |"
        )
    return "\n".join(lines)


def clients_table(summary: dict) -> str:
    lines = [
        "| Clients | Mode | Median it/s | Max it/s | p50 ms | p99 ms | Refused runs | Ratio to best pooled |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['clients']} | {s['mode']} | {s.get('median', '-')} | {s.get('max', '-')} | {s.get('p50_ms', '-')} | "
            f"{s.get('p99_ms', '-')} | {s['refused']} | {s.get('ratio_to_best_pooled', '')} |"
        )
    return "\n".join(lines)


def plot_layers(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [f"{k[0]}. {v['name']}" for k, v in summary.items()]
    medians = [v["median"] for v in summary.values()]
    ax.barh(names[::-1], medians[::-1], color="#4477aa")
    for i, v in enumerate(list(summary.values())[::-1]):
        ax.scatter(v["runs"], [i] * len(v["runs"]), color="black", s=10, zorder=3)
        ax.text(v["max"], i, f"  {v['ratio_to_stock']}x", va="center")
    ax.set_xlabel("payment iterations/s (median; dots: runs)")
    ax.set_title("Payment workload, layer by layer (8 clients, TLS)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def plot_clients(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, color in (("direct", "#cc6677"), ("pooled", "#4477aa")):
        rows = [s for s in summary.values() if s["mode"] == mode]
        ok = [s for s in rows if "median" in s]
        left.plot([s["clients"] for s in ok], [s["median"] for s in ok], "o-", color=color, label=mode)
        for s in rows:
            if s["refused"] and "median" not in s:
                left.scatter([s["clients"]], [0], marker="x", color=color, s=60)
        right.plot([s["clients"] for s in ok], [s["p99_ms"] for s in ok], "o-", color=color, label=f"{mode} p99")
        right.plot([s["clients"] for s in ok], [s["p50_ms"] for s in ok], "o--", color=color, label=f"{mode} p50")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients")
        ax.legend()
    left.set_ylabel("iterations/s (x at 0: refused)")
    right.set_ylabel("latency, ms")
    right.set_yscale("log")
    fig.suptitle("Payment workload by client count, direct vs PgBouncer")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def backup_table(result: dict) -> str:
    raw, full = result["raw_upload_mb_per_s"], result["full_backup_mb_per_s"]
    return "\n".join([
        "| What | MB of database per s (median) | Max | Runs | Ratio to raw upload |",
        "| --- | ---: | ---: | --- | ---: |",
        f"| Raw upload (uncompressed tar, boto3) | {raw['median']} | {raw['max']} | "
        f"{', '.join(map(str, raw['runs']))} | 1.0 |",
        f"| pgBackRest full backup (zst, encrypted, from a standby) | {full['median']} | {full['max']} | "
        f"{', '.join(map(str, full['runs']))} | {result['full_backup_to_raw']} |",
        f"| Logical backup (pg_dump, upload, verify) | {result['logical_backup_mb_per_s']} | | | |",
    ])  # fmt: skip


def plot_backup(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    rows = [("raw upload", result["raw_upload_mb_per_s"]), ("pgBackRest full", result["full_backup_mb_per_s"])]
    for i, (name, r) in enumerate(rows):
        left.barh([name], [r["median"]], color="#4477aa")
        left.scatter(r["runs"], [i] * len(r["runs"]), color="black", s=10, zorder=3)
    left.barh(["logical dump"], [result["logical_backup_mb_per_s"]], color="#999933")
    left.axvline(4.2, color="#cc6677", linestyle="--", label="barman-cloud before (4.2)")
    left.set_xlabel("MB of database per second")
    left.legend()
    right.bar(["logical restore", "PITR restore"], [result["logical_restore_s"], result["pitr_restore_s"]],
              color=["#999933", "#4477aa"])  # fmt: skip
    right.axhline(60, color="#cc6677", linestyle="--", label="60 s target (PITR)")
    right.set_ylabel("seconds")
    right.legend()
    fig.suptitle(f"Backups and restores, {result['database_mb']:.0f} MB payments database")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str]) -> int:
    kind, directory, png = argv[1], Path(argv[2]), Path(argv[3])
    if kind == "backup":  # one result file
        result = json.loads(directory.read_text())
        print(backup_table(result))
        try:
            plot_backup(result, png)
            print(f"plot: {png}")
        except ImportError:
            print("matplotlib missing (pip install -r bench/requirements.txt): no plot")
        return 0
    runs = load(directory)
    summary = layers_summary(runs) if kind == "layers" else clients_summary(runs)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(layers_table(summary) if kind == "layers" else clients_table(summary))
    try:
        (plot_layers if kind == "layers" else plot_clients)(summary, png)
        print(f"plot: {png}")
    except ImportError:
        print("matplotlib missing (pip install -r bench/requirements.txt): no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

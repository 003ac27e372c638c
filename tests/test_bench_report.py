"""bench/report.py: the summaries the layers and clients benchmarks print."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("report", Path(__file__).parent.parent / "bench" / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


def test_layers_are_ratios_of_medians_to_stock():
    runs = [("1-stock", {"iterations_per_s": v}) for v in (100, 120, 110)]
    runs += [("4-sync", {"iterations_per_s": v}) for v in (50, 60)]
    summary = report.layers_summary(runs)
    assert summary["1-stock"]["median"] == 110 and summary["1-stock"]["ratio_to_stock"] == 1.0
    assert summary["4-sync"]["median"] == 55 and summary["4-sync"]["max"] == 60
    assert summary["4-sync"]["ratio_to_stock"] == 0.5
    assert "| 4 the 3-member lab (+ synchronous replication) | 55.0 | 60 | 0.5 |" in report.layers_table(summary)


def test_clients_record_refusals_and_the_ratio_to_the_best_pooled_count():
    ok = {"iterations_per_s": 100.0, "latency_p50_ms": 1.0, "latency_p99_ms": 5.0, "failed": 0}
    runs = [
        ("pooled-8", {**ok, "iterations_per_s": 200.0}),
        ("pooled-1024", {**ok, "iterations_per_s": 190.0, "latency_p99_ms": 900.0}),
        ("direct-1024", {"clients": 1024, "refused": "too many clients"}),
        ("direct-8", ok),
    ]
    summary = report.clients_summary(runs)
    assert list(summary) == ["direct-0008", "direct-1024", "pooled-0008", "pooled-1024"]
    assert summary["direct-1024"]["refused"] == 1 and "median" not in summary["direct-1024"]
    assert summary["pooled-1024"]["ratio_to_best_pooled"] == 0.95
    assert summary["pooled-1024"]["p99_ms"] == 900.0
    assert "| 1024 | direct | - | - | - | - | 1 |" in report.clients_table(summary)

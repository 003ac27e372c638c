"""The dashboard (pgops/dashboard.py): the committed Grafana JSON is the one
the panels generate, every panel's PromQL parses (promtool, as recording
rules), and the layout has no overlapping panels."""

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from pgops import dashboard

ROOT = Path(__file__).parent.parent
GRAFANA = ROOT / "docs" / "grafana" / "pgops-cluster.json"
PROMTOOL = shutil.which("promtool") or str(ROOT / ".venv" / "bin" / "promtool")


def test_the_committed_grafana_dashboard_is_generated_from_the_panels():
    assert json.loads(GRAFANA.read_text()) == dashboard.grafana(), "run: python -m pgops.dashboard grafana " + str(
        GRAFANA.relative_to(ROOT)
    )


def test_every_panel_query_parses(tmp_path):
    records = [{"record": f"pgops:panel_{i}", "expr": p.expr} for i, p in enumerate(dashboard.PANELS)]
    rules = {"groups": [{"name": "panels", "rules": records}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_query_is_caught(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "rate(up[1m]"}]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


def test_panels_do_not_overlap_and_every_one_reads_the_chosen_source():
    cells = set()
    for panel in dashboard.grafana()["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["expr"] for t in panel["targets"])
    ids = [p["id"] for p in dashboard.grafana()["panels"]]
    assert len(ids) == len(set(ids))


def test_legends_name_their_series():
    panel = dashboard.PANELS[0]
    assert panel.label({"member": "pg-a", "instance": "x"}) == "pg-a"

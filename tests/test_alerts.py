"""The alert rules: promtool's syntax check and unit tests, and what every
alert must carry (severity, summary, a runbook section that exists)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pgops import alerttests

ROOT = Path(__file__).parent.parent
RULES = ROOT / "roles" / "monitoring" / "files" / "alerts.yml"
CASES = ROOT / "tests" / "alerts" / "cases.yml"
RUNBOOK = ROOT / "docs" / "operations" / "alerts.md"
PROMTOOL = shutil.which("promtool") or str(ROOT / ".venv" / "bin" / "promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_as_its_cases_say(tmp_path):
    out = tmp_path / "alerts_test.yml"
    assert alerttests.main([str(RULES), str(CASES), str(out)]) == 0
    result = promtool("test", "rules", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    anchors = {re.sub(r"[^a-z0-9-]", "", h.lower()) for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    for name, rule in alerttests.load_alerts(RULES).items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        url = rule["annotations"]["runbook_url"]
        assert url == f"@RUNBOOK_BASE_URL@/alerts.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name}: no section in {RUNBOOK.name}"


def test_a_rule_without_a_quiet_case_is_refused():
    alerts = {"A": {}, "B": {}}
    cases = [{"alert": "A", "fires": True}, {"alert": "A", "fires": False}, {"alert": "B", "fires": True}]
    assert alerttests.problems(alerts, cases) == ["B has no quiet case"]
    assert alerttests.problems(alerts, [*cases, {"alert": "C", "fires": True}])[0] == "case for unknown alert C"


def test_annotations_render_labels_only():
    assert alerttests.render("{{ $labels.kind }} backup on {{$labels.instance}}", {"kind": "full"}) == "full backup on "
    with pytest.raises(ValueError):
        alerttests.render("lag {{ $value }}", {})

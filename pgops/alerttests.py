"""promtool unit tests of the alert rules, built from a compact list of cases.

Each case in tests/alerts/cases.yml names an alert, the input series, when
to evaluate, and whether the alert fires there (with the labels it carries)
or stays quiet. This module turns the cases into a `promtool test rules` file:
it adds each firing alert's expected severity and annotations from the rule
itself (substituting `{{ $labels.x }}` with the expected labels), so a case
states only what the test is about. It also refuses cases that name no alert,
and rules that lack a firing or a quiet case.

    python -m pgops.alerttests RULES CASES OUT   # then: promtool test rules OUT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

LABEL_REF = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def load_alerts(rules: Path) -> dict[str, dict]:
    doc = yaml.safe_load(rules.read_text())
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule}


def render(text: str, labels: dict[str, str]) -> str:
    """What Prometheus makes of an annotation that refers only to labels."""
    if "{{" in LABEL_REF.sub("", text):
        raise ValueError(f"annotation uses more than $labels: {text!r}")
    return LABEL_REF.sub(lambda m: str(labels.get(m.group(1), "")), text)


def problems(alerts: dict[str, dict], cases: list[dict]) -> list[str]:
    found = []
    for case in cases:
        if case["alert"] not in alerts:
            found.append(f"case for unknown alert {case['alert']}")
    for name in alerts:
        kinds = {bool(c["fires"]) for c in cases if c["alert"] == name}
        if True not in kinds:
            found.append(f"{name} has no firing case")
        if False not in kinds:
            found.append(f"{name} has no quiet case")
    return found


def build(rules: Path, cases: list[dict]) -> dict:
    alerts = load_alerts(rules)
    wrong = problems(alerts, cases)
    if wrong:
        raise ValueError("; ".join(wrong))
    tests = []
    for case in cases:
        rule = alerts[case["alert"]]
        expected = []
        if case["fires"]:
            labels = {**case.get("labels", {}), **rule.get("labels", {})}
            expected.append(
                {
                    "exp_labels": labels,
                    "exp_annotations": {k: render(v, labels) for k, v in rule.get("annotations", {}).items()},
                }
            )
        tests.append(
            {
                "name": f"{case['alert']} {'fires' if case['fires'] else 'stays quiet'}: {case.get('why', '')}".strip(),
                "interval": case.get("interval", "15s"),
                "input_series": case["series"],
                "alert_rule_test": [{"eval_time": case["at"], "alertname": case["alert"], "exp_alerts": expected}],
            }
        )
    return {"rule_files": [str(rules.resolve())], "evaluation_interval": "15s", "tests": tests}


def main(argv: list[str]) -> int:
    rules, cases, out = (Path(a) for a in argv)
    try:
        doc = build(rules, yaml.safe_load(cases.read_text()))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The summary `make lab` ends with: each member's role as Patroni reports
it, the connection strings, and how to open psql as the lab's read-only
user. Reads the JSON playbooks/status.yml writes (status_file).

    python -m pgops.labsummary lab/.state/status.json
"""

from __future__ import annotations

import json
import sys


def render(status: dict) -> str:
    lines = ["", "== The lab is up", ""]
    for member in status["members"]:
        patroni = member.get("patroni") or {}
        role = patroni.get("role", "not in the cluster")
        state = patroni.get("state", "-")
        lag = patroni.get("lag")
        detail = f", lag {lag}" if lag not in (None, "", "-") else ""
        lines.append(f"  {member['host']:<14} {member['address']:<15} {role} ({state}{detail})")
    strings = status["connection_strings"]
    lines += [
        "",
        f"  writes:  {strings['primary']}",
        f"  reads:   {strings['readers']}",
        f"  pooled writes (HAProxy + PgBouncer): {strings['pooled_rw']}",
        f"  pooled reads:                        {strings['pooled_ro']}",
        "",
        "  psql as the read-only user lab_reader: make psql",
        "  cluster status: ansible-playbook -i inventories/lab playbooks/status.yml",
        "",
    ]
    if not status.get("leader"):
        lines.insert(2, "  WARNING: no leader; see playbooks/status.yml and docs/operations/")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

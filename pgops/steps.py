"""Per-step timings of `make test`: each step (lint, unit, a Molecule
scenario) runs through `python -m pgops.steps run NAME -- COMMAND...`, which
passes the command's output through, records how long it took and, for a
Molecule run, how long each of its actions took (create, converge,
idempotence, verify, ...), read from Molecule's own "➜ action: Executing"
lines. `python -m pgops.steps report` prints the table the README quotes.

Records go to PGOPS_STEPS_FILE (default .cache/steps.jsonl), one JSON object
per line: {"step": "molecule cluster", "action": "converge", "seconds": 312.4,
"ok": true}; the whole step has action "" and its start and end (epoch
seconds). Steps may run side by side (`make molecule` runs the scenarios in
parallel), so the total is the wall clock from the first start to the last end.

A failed step also keeps the lines that say what failed (pytest's FAILED and
ERROR summary lines and its first assertion lines, Ansible's "fatal:" lines),
and the report repeats them under the table: CI shows the end of the output,
and a background scenario's log is printed after the streamed one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent.parent / ".cache" / "steps.jsonl"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# INFO     cluster ➜ converge: Executing   /   ... ➜ converge: Executed: Successful
ACTION = re.compile(r"^INFO\s+(?P<scenario>\S+) ➜ (?P<action>[a-z_]+): (?P<what>Executing|Executed: (?P<result>\w+))")


def steps_file() -> Path:
    return Path(os.environ.get("PGOPS_STEPS_FILE", DEFAULT_FILE))


class ActionClock:
    """Turns Molecule's action lines into (action, seconds, ok) records."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started: dict[str, float] = {}
        self.records: list[dict] = []

    def feed(self, line: str) -> None:
        m = ACTION.match(ANSI.sub("", line).strip())
        if not m:
            return
        action = m.group("action")
        if m.group("what") == "Executing":
            self.started[action] = self.clock()
        elif action in self.started:
            seconds = self.clock() - self.started.pop(action)
            self.records.append(
                {"action": action, "seconds": round(seconds, 1), "ok": m.group("result") == "Successful"}
            )


class FailureLines:
    """Keeps the lines of a run's output that name what failed, bounded."""

    PATTERN = re.compile(r"^((FAILED|ERROR) \S+::|E {3}|fatal: \[|=+ .*\b(failed|errors?)\b.* in [0-9.]+s)")
    BOX = re.compile(r"^\s*│? ?")  # Molecule frames Ansible's output: "  │ fatal: [...]"
    LIMIT, WIDTH = 60, 300

    def __init__(self):
        self.lines: list[str] = []
        self.kept_last = False  # the previous line was kept: a wrapped one continues it

    def feed(self, line: str) -> None:
        text = self.BOX.sub("", ANSI.sub("", line).rstrip(), count=1)
        if self.kept_last and text.startswith("  ") and text.strip():
            # Molecule's frame wraps long lines; the rest is indented.
            last, rest = self.lines[-1], text.strip()
            joined = f"{last} {rest}" if last in ("FAILED", "ERROR") or last.endswith("-") else last + rest
            self.lines[-1] = joined if len(joined) <= self.WIDTH else joined[: self.WIDTH] + " ..."
            return
        self.kept_last = len(self.lines) < self.LIMIT and bool(self.PATTERN.match(text) or text in ("FAILED", "ERROR"))
        if self.kept_last:
            self.lines.append(text if len(text) <= self.WIDTH else text[: self.WIDTH] + " ...")


def run(name: str, command: list[str]) -> int:
    clock, failures = ActionClock(), FailureLines()
    started, wall_start = time.monotonic(), time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        clock.feed(line)
        failures.feed(line)
    rc = proc.wait()
    records = [{"step": name, **r} for r in clock.records]
    records.append(
        {"step": name, "action": "", "seconds": round(time.monotonic() - started, 1), "ok": rc == 0,
         "start": round(wall_start, 1), "end": round(time.time(), 1)}
        | ({"failures": failures.lines} if rc != 0 and failures.lines else {})
    )  # fmt: skip
    path = steps_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return rc


def minutes(seconds: float) -> str:
    whole = round(seconds)  # 1559.9 s is 26:00, not 25:60
    return f"{whole // 60}:{whole % 60:02d}"


def report(records: list[dict]) -> str:
    """A Markdown table: each step, its Molecule actions indented, the total
    (wall clock: steps that ran side by side count once)."""
    lines = ["| Step | Seconds | m:ss | Result |", "| --- | ---: | ---: | --- |"]
    steps = [r for r in records if not r["action"]]
    if steps and all("start" in r and "end" in r for r in steps):
        label, total = "total (wall clock)", max(r["end"] for r in steps) - min(r["start"] for r in steps)
    else:
        label, total = "total", sum(r["seconds"] for r in steps)
    for r in steps:
        result = "ok" if r["ok"] else "FAILED"
        lines.append(f"| {r['step']} | {r['seconds']:.1f} | {minutes(r['seconds'])} | {result} |")
        for a in (x for x in records if x["step"] == r["step"] and x["action"]):
            lines.append(
                f"| &nbsp;&nbsp;{a['action']} | {a['seconds']:.1f} | {minutes(a['seconds'])} | "
                f"{'ok' if a['ok'] else 'FAILED'} |"
            )
    lines.append(f"| **{label}** | {total:.1f} | {minutes(total)} | |")
    for r in steps:
        if r.get("failures"):
            lines += ["", f"== what failed in {r['step']}", *r["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a step and record its timings")
    p.add_argument("name")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("report", help="print the recorded timings")
    sub.add_parser("reset", help="forget the recorded timings")
    args = parser.parse_args(argv)
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run NAME -- COMMAND...")
        return run(args.name, cmd)
    if args.command == "reset":
        steps_file().unlink(missing_ok=True)
        return 0
    path = steps_file()
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    print(report(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

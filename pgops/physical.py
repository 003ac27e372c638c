"""Physical backups with pgBackRest, on the member whose turn it is (pgops-pgbackrest).

Installed on the database hosts by the `backup` role and run by its timers on
every member. Each run asks Patroni who should act, so a failover needs no
re-deploy: a healthy standby (the first by name, so that every member agrees)
takes the backup, with pgBackRest reading the files from it and only the few
it must from the primary (backup-standby); the leader takes it only when no
standby streams.

    pgops-pgbackrest backup full|diff|incr    back up if it is this member's turn
    pgops-pgbackrest turn                     print the member whose turn it is
    pgops-pgbackrest summary                  the repository in brief, as JSON

Exit status: 0 done, 75 not this member's turn (nothing recorded), 1 failed.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

NOT_MY_TURN = 75  # EX_TEMPFAIL, as pgops-backup
DEFAULT_CONFIG = "/etc/pgops/pgbackrest.json"
KINDS = ("full", "diff", "incr")
# Patroni's member roles (/cluster).
STANDBYS = ("replica", "sync_standby", "quorum_standby")
LEADERS = ("leader", "standby_leader")


class TurnError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    stanza: str
    patroni_url: str
    ca_file: str

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path) as f:
            return cls(**json.load(f))


def whose_turn(members: list[dict]) -> str:
    """The member that should back up, from Patroni's /cluster members: the
    first streaming replica by name, else a running leader."""
    replicas = sorted(
        m["name"] for m in members if m.get("role") in STANDBYS and m.get("state") == "streaming"
    )  # fmt: skip
    if replicas:
        return replicas[0]
    leaders = [m["name"] for m in members if m.get("role") in LEADERS and m.get("state") == "running"]
    if leaders:
        return leaders[0]
    raise TurnError("no streaming replica and no running leader: no backup can be taken")


def leader_in(members: list[dict]) -> str | None:
    """The member holding the leader lock, from Patroni's /cluster members."""
    return next((m["name"] for m in members if m.get("role") == "leader"), None)


def backup_command(stanza: str, kind: str, on_the_leader: bool) -> list[str]:
    """pgBackRest's backup of KIND. The configuration reads the files from a
    standby (backup-standby); on the leader, which backs up only when no
    standby streams, that is lifted (2.45 would stop: no standby to read)."""
    options = ["--no-backup-standby"] if on_the_leader else []
    return ["/usr/bin/pgbackrest", f"--stanza={stanza}", f"--type={kind}", *options, "backup"]


def summarize(info: list[dict]) -> dict:
    """The repository in brief, from pgbackrest info --output=json: the last
    good backup of each kind (stop time, label, size in the repository), the
    archive's first and last segments, and the bytes the backups take in the
    repository (their own files; WAL not included)."""
    stanza = info[0] if info else {}
    backups = [b for b in stanza.get("backup", []) if not b.get("error")]
    last = {}
    for b in sorted(backups, key=lambda b: b["timestamp"]["stop"]):
        last[b["type"]] = {
            "label": b["label"],
            "stopped_at": b["timestamp"]["stop"],
            "repository_bytes": b["info"]["repository"]["delta"],
        }
    archives = stanza.get("archive", [])
    return {
        "stanza": stanza.get("name", ""),
        "status": stanza.get("status", {}).get("message", "no stanza"),
        "last": last,
        "backups": len(backups),
        "archive_min": archives[-1].get("min") if archives else None,
        "archive_max": archives[-1].get("max") if archives else None,
        "repository_bytes": sum(b["info"]["repository"]["delta"] for b in backups),
    }


def patroni_get(cfg: Config, path: str) -> dict:
    context = ssl.create_default_context(cafile=cfg.ca_file)
    try:
        # An https URL from the role's settings.
        with urllib.request.urlopen(f"{cfg.patroni_url}{path}", context=context, timeout=10) as r:  # noqa: S310
            return json.load(r)
    except (OSError, ValueError) as e:
        raise TurnError(f"Patroni did not answer {path}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgops-pgbackrest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backup")
    p.add_argument("kind", choices=KINDS)
    sub.add_parser("turn")
    sub.add_parser("summary")
    args = parser.parse_args(argv)
    try:
        cfg = Config.load(args.config)
        if args.command == "summary":
            command = ["/usr/bin/pgbackrest", f"--stanza={cfg.stanza}", "--output=json", "info"]
            info = subprocess.run(command, check=True, capture_output=True, text=True)
            print(json.dumps(summarize(json.loads(info.stdout)), sort_keys=True))
            return 0
        me = patroni_get(cfg, "/patroni")["patroni"]["name"]
        members = patroni_get(cfg, "/cluster")["members"]
        chosen = whose_turn(members)
        leader = chosen == leader_in(members)
    except (TurnError, OSError, KeyError, ValueError, subprocess.CalledProcessError) as e:
        print(f"pgops-pgbackrest: {args.command} FAILED: {e}", file=sys.stderr)
        return 1
    if args.command == "turn":
        print(chosen)
        return 0
    if chosen != me:
        print(f"pgops-pgbackrest: {chosen} backs up, not {me}")
        return NOT_MY_TURN
    run = subprocess.run(backup_command(cfg.stanza, args.kind, leader), check=False)
    if run.returncode != 0:
        print(f"pgops-pgbackrest: {args.kind} backup FAILED (pgbackrest exit {run.returncode})", file=sys.stderr)
        return 1
    print(f"pgops-pgbackrest: {args.kind} backup done on {me}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

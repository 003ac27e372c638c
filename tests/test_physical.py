"""Whose turn it is to take a physical backup, from Patroni's view of the cluster."""

import pytest

from pgops.physical import TurnError, backup_command, leader_in, summarize, whose_turn


def member(name, role, state):
    return {"name": name, "role": role, "state": state}


def test_the_first_streaming_standby_by_name_backs_up():
    members = [
        member("pg-c", "quorum_standby", "streaming"),
        member("pg-a", "leader", "running"),
        member("pg-b", "replica", "streaming"),
    ]
    assert whose_turn(members) == "pg-b"
    assert whose_turn(list(reversed(members))) == "pg-b"  # every member agrees


def test_a_standby_that_does_not_stream_is_passed_over():
    members = [
        member("pg-a", "leader", "running"),
        member("pg-b", "replica", "starting"),
        member("pg-c", "sync_standby", "streaming"),
    ]
    assert whose_turn(members) == "pg-c"


def test_the_leader_backs_up_when_no_standby_streams():
    members = [member("pg-a", "replica", "stopped"), member("pg-b", "leader", "running")]
    assert whose_turn(members) == "pg-b"


def test_the_logical_dump_follows_the_leader_lock():
    members = [member("pg-a", "quorum_standby", "streaming"), member("pg-b", "leader", "running")]
    assert leader_in(members) == "pg-b"
    assert leader_in([member("pg-a", "replica", "running"), member("pg-b", "standby_leader", "running")]) is None
    assert leader_in([]) is None


def test_the_leader_backs_up_its_own_files():
    assert backup_command("payments", "incr", on_the_leader=False) == [
        "/usr/bin/pgbackrest", "--stanza=payments", "--type=incr", "backup"]  # fmt: skip
    assert backup_command("payments", "full", on_the_leader=True) == [
        "/usr/bin/pgbackrest", "--stanza=payments", "--type=full", "--no-backup-standby", "backup"]  # fmt: skip


def test_no_leader_and_no_standby_is_an_error():
    with pytest.raises(TurnError):
        whose_turn([member("pg-a", "replica", "stopped"), member("pg-b", "leader", "stopped")])
    with pytest.raises(TurnError):
        whose_turn([])


def backup(label, kind, stop, size, error=False):
    return {"label": label, "type": kind, "timestamp": {"start": stop - 10, "stop": stop}, "error": error,
            "info": {"repository": {"delta": size, "size": size}}}  # fmt: skip


def test_the_summary_has_the_last_good_backup_of_each_kind_and_the_repository_size():
    info = [{
        "name": "payments",
        "status": {"code": 0, "message": "ok"},
        "archive": [{"id": "15-1", "min": "000000010000000000000003", "max": "00000002000000000000000A"}],
        "backup": [
            backup("F1", "full", 100, 1000), backup("D1", "diff", 200, 50), backup("I1", "incr", 300, 5),
            backup("D2", "diff", 400, 60), backup("I2", "incr", 500, 7, error=True),
        ],
    }]  # fmt: skip
    summary = summarize(info)
    assert summary["last"] == {
        "full": {"label": "F1", "stopped_at": 100, "repository_bytes": 1000},
        "diff": {"label": "D2", "stopped_at": 400, "repository_bytes": 60},
        "incr": {"label": "I1", "stopped_at": 300, "repository_bytes": 5},
    }
    assert summary["backups"] == 4 and summary["repository_bytes"] == 1115
    assert summary["archive_max"] == "00000002000000000000000A" and summary["status"] == "ok"


def test_an_empty_repository_summarizes_to_nothing():
    assert summarize([])["last"] == {} and summarize([])["status"] == "no stanza"
    empty = summarize([{"name": "payments", "status": {"message": "no valid backups"}, "archive": [], "backup": []}])
    assert empty["backups"] == 0 and empty["archive_max"] is None

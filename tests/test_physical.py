"""Whose turn it is to take a physical backup, from Patroni's view of the cluster."""

import pytest

from pgops.physical import TurnError, whose_turn


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


def test_no_leader_and_no_standby_is_an_error():
    with pytest.raises(TurnError):
        whose_turn([member("pg-a", "replica", "stopped"), member("pg-b", "leader", "stopped")])
    with pytest.raises(TurnError):
        whose_turn([])

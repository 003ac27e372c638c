"""The cluster-health rule the HA tests and the failover benchmark share."""

import pytest

from pgops.faults import is_healthy, leader_in, wait_until


def view(*members):
    return {name: {"role": role, "state": state, "timeline": tl} for name, role, state, tl in members}


def test_one_leader_and_every_replica_streaming_on_its_timeline_is_healthy():
    assert is_healthy(view(("a", "leader", "running", 3), ("b", "quorum_standby", "streaming", 3),
                           ("c", "replica", "streaming", 3)), 3)  # fmt: skip


@pytest.mark.parametrize(
    "members",
    [
        (("a", "leader", "running", 3), ("b", "quorum_standby", "streaming", 3)),  # a member missing
        (("a", "leader", "running", 3), ("b", "leader", "running", 4), ("c", "replica", "streaming", 4)),
        (("a", "leader", "running", 4), ("b", "replica", "streaming", 3), ("c", "replica", "streaming", 4)),
        (("a", "leader", "running", 3), ("b", "replica", "starting", 3), ("c", "replica", "streaming", 3)),
        (("a", "replica", "running", 3), ("b", "replica", "streaming", 3), ("c", "replica", "streaming", 3)),
    ],
    ids=["member-missing", "two-leaders", "old-timeline", "not-streaming", "no-leader"],
)
def test_anything_else_is_not(members):
    assert not is_healthy(view(*members), 3)


def test_leader_in_names_the_leader_or_nobody():
    assert leader_in(view(("a", "replica", "streaming", 1), ("b", "leader", "running", 1))) == "b"
    assert leader_in(view(("a", "replica", "streaming", 1))) == ""


def test_wait_until_returns_the_value_or_names_what_did_not_happen():
    values = iter([None, 0, "ready"])
    assert wait_until(lambda: next(values), 5, "ready", interval=0.01) == "ready"
    with pytest.raises(AssertionError, match="not within 0.05 s: never"):
        wait_until(lambda: False, 0.05, "never", interval=0.01)

from pgops.labsummary import render

STATUS = {
    "leader": "pg-standby",
    "members": [
        {
            "host": "pg-primary",
            "address": "172.29.57.10",
            "patroni": {"role": "quorum_standby", "state": "streaming", "lag": 0},
        },
        {"host": "pg-standby", "address": "172.29.57.11", "patroni": {"role": "leader", "state": "running"}},
        {"host": "pg-standby2", "address": "172.29.57.12", "patroni": {}},
    ],
    "connection_strings": {
        "primary": "postgresql://a,b,c/payments?rw",
        "readers": "postgresql://a,b,c/payments?ro",
        "pooled_rw": "postgresql://a:5000,b:5000/payments",
        "pooled_ro": "postgresql://a:5001/payments",
    },
}


def test_summary_names_each_members_role_and_how_to_connect():
    text = render(STATUS)
    assert "pg-standby     172.29.57.11    leader (running)" in text
    assert "pg-primary     172.29.57.10    quorum_standby (streaming, lag 0)" in text
    assert "pg-standby2    172.29.57.12    not in the cluster (-)" in text
    assert "writes:  postgresql://a,b,c/payments?rw" in text and "reads:   postgresql://a,b,c/payments?ro" in text
    assert "make psql" in text and "WARNING" not in text


def test_summary_warns_without_a_leader():
    assert "WARNING: no leader" in render({**STATUS, "leader": ""})

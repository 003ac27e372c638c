"""Re-running the role with changed variables: reload vs restart, and bad
input refused before anything is changed. Runs the real playbook against the
scenario's first host, then puts the scenario's configuration back."""

import pytest

from pgops.testing import PG_VERSION, TLS_DIR, psql, recap_changed, run_playbook

testinfra_hosts = ["ansible://molecule-pg1"]

DROPIN = f"/etc/postgresql/{PG_VERSION}/main/conf.d/50-pgops.conf"
HOST = "molecule-pg1"
SCENARIO_TUNING = {"work_mem": "8MB"}


def started_at(host) -> str:
    return psql(host, "SELECT pg_postmaster_start_time()")


def dropin_sum(host) -> str:
    return host.file(DROPIN).sha256sum


def test_reloadable_change_is_applied_without_restart(host):
    """A reloadable parameter and a new certificate name: both applied by a
    reload, the server is not restarted."""
    before = started_at(host)
    run = run_playbook(
        "playbooks/postgresql.yml",
        {
            "postgresql_parameters": {"log_min_duration_statement": "250ms"},
            "postgresql_tls_extra_sans": ["DNS:db.payments.test"],
        },
        limit=HOST,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert recap_changed(run.stdout)[HOST] >= 1
    assert psql(host, "SHOW log_min_duration_statement") == "250ms"
    cert = host.check_output(f"openssl x509 -noout -ext subjectAltName -in {TLS_DIR}/server.crt")
    assert "DNS:db.payments.test" in cert
    assert started_at(host) == before


def test_restart_only_for_pending_restart_parameters(host):
    before = started_at(host)
    run = run_playbook(
        "playbooks/postgresql.yml", {"postgresql_tuning": {**SCENARIO_TUNING, "shared_buffers": "256MB"}}, limit=HOST
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Restart PostgreSQL for parameters that need it" in run.stdout
    assert psql(host, "SHOW shared_buffers") == "256MB"
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert started_at(host) != before


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"postgresql_tuning": {"shared_buffers": "lots"}}, "is not a PostgreSQL memory value"),
        ({"postgresql_tuning": {"shared_buffers": "512 MB"}}, "is not a PostgreSQL memory value"),
        ({"postgresql_version": 11}, "postgresql_version"),
        ({"postgresql_version": 16}, "is not packaged by Debian"),
        ({"postgresql_tuning": {"shard_buffers": "1GB"}}, "shard_buffers"),
        ({"postgresql_max_connections": "many"}, "postgresql_max_connections"),
        (
            {"postgresql_hba_entries": [{"database": "all", "user": "all", "address": "0.0.0.0/0", "method": "trust"}]},
            "trust",
        ),
        (
            {"postgresql_hba_entries": [{"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8"}]},
            "host",
        ),
        ({"postgresql_hba_entries": [{"database": "all", "user": "all"}]}, "hostssl entries need an address"),
    ],
    ids=[
        "memory-word",
        "memory-space",
        "unknown-version",
        "version-not-packaged",
        "unknown-tuning-key",
        "non-integer",
        "trust",
        "non-tls-type",
        "hostssl-without-address",
    ],
)
def test_bad_input_is_refused_before_any_change(host, extra_vars, message):
    before_sum, before_start = dropin_sum(host), started_at(host)
    run = run_playbook("playbooks/postgresql.yml", extra_vars, limit=HOST)
    assert run.returncode != 0
    assert message in run.stdout
    assert recap_changed(run.stdout).get(HOST, 0) == 0
    assert dropin_sum(host) == before_sum
    assert started_at(host) == before_start


def test_value_postgresql_rejects_fails_loudly_and_server_keeps_running(host):
    before = started_at(host)
    run = run_playbook(
        "playbooks/postgresql.yml", {"postgresql_parameters": {"log_min_duration_statement": "soon"}}, limit=HOST
    )
    assert run.returncode != 0
    assert "PostgreSQL rejected the new configuration" in run.stdout
    assert "log_min_duration_statement" in run.stdout
    assert started_at(host) == before
    assert psql(host, "SELECT 1") == "1"


def test_scenario_configuration_is_restored_and_stable(host):
    run = run_playbook("playbooks/postgresql.yml", limit=HOST)
    assert run.returncode == 0, run.stdout[-3000:]
    assert psql(host, "SHOW shared_buffers") == "512MB"
    assert (
        psql(
            host,
            "SELECT count(*) FROM pg_settings WHERE name = 'log_min_duration_statement' "
            "AND source = 'configuration file'",
        )
        == "0"
    )
    again = run_playbook("playbooks/postgresql.yml", limit=HOST)
    assert again.returncode == 0
    assert recap_changed(again.stdout)[HOST] == 0

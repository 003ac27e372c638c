"""Re-running the roles with changed variables: a reload when that is enough,
a restart through Patroni only for what pg_settings.pending_restart names,
and bad input refused by site.yml's checks before anything changes. Runs the
real playbooks, then puts the scenario's configuration back."""

import concurrent.futures
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pgops import runner
from pgops.testing import psql, recap_changed, run_playbook, setting

SCENARIO_TUNING = {"work_mem": "8MB"}


def started_at(host) -> str:
    return psql(host, "SELECT pg_postmaster_start_time()")


def dropin_sum(host) -> str:
    return host.file(f"{setting(host, 'config_file').rsplit('/', 1)[0]}/conf.d/50-pgops.conf").sha256sum


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
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert recap_changed(run.stdout)[host.backend.host] >= 1
    assert setting(host, "log_min_duration_statement") == "250ms"
    cert = host.check_output("openssl x509 -noout -ext subjectAltName -in %s", setting(host, "ssl_cert_file"))
    assert "DNS:db.payments.test" in cert
    assert started_at(host) == before


def test_restart_only_for_pending_restart_parameters(host):
    before = started_at(host)
    run = run_playbook(
        "playbooks/postgresql.yml", {"postgresql_tuning": {**SCENARIO_TUNING, "shared_buffers": "256MB"}}
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Restart one member at a time, replicas first" in run.stdout
    assert setting(host, "shared_buffers") == "256MB"
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert started_at(host) != before


@pytest.fixture(scope="module")
def etcd_group_empty(tmp_path_factory):
    """The scenario's inventory with an `etcd` group that has no hosts."""
    source = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    target = tmp_path_factory.mktemp("inventory") / "inventory"
    shutil.copytree(source, target)  # with its group_vars and host_vars
    inventory = yaml.safe_load((target / "ansible_inventory.yml").read_text())
    inventory["etcd"] = {"hosts": {}}
    (target / "ansible_inventory.yml").write_text(yaml.safe_dump(inventory))
    return str(target / "ansible_inventory.yml")


BAD_INPUT = {
    "memory-word": ({"postgresql_tuning": {"shared_buffers": "lots"}}, "is not a PostgreSQL memory value"),
    "memory-space": ({"postgresql_tuning": {"shared_buffers": "512 MB"}}, "is not a PostgreSQL memory value"),
    "unknown-version": ({"postgresql_version": 11}, "postgresql_version"),
    "version-not-packaged": ({"postgresql_version": 16}, "is not packaged by Debian"),
    "unknown-tuning-key": ({"postgresql_tuning": {"shard_buffers": "1GB"}}, "shard_buffers"),
    "non-integer": ({"postgresql_max_connections": "many"}, "postgresql_max_connections"),
    "trust": (
        {"postgresql_hba_entries": [{"database": "all", "user": "all", "address": "0.0.0.0/0", "method": "trust"}]},
        "trust",
    ),
    "non-tls-type": (
        {"postgresql_hba_entries": [{"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8"}]},
        "host",
    ),
    "hostssl-without-address": ({"postgresql_hba_entries": [{"database": "all", "user": "all"}]}, "need an address"),
    # Settings the roles own: Patroni's, and the guarantees (TLS, preloads).
    "reserved-listen": ({"postgresql_parameters": {"listen_addresses": "*"}}, "are Patroni's"),
    "reserved-ssl": ({"postgresql_parameters": {"ssl": "off"}}, "are what the roles guarantee"),
    "reserved-preload": ({"postgresql_parameters": {"shared_preload_libraries": ""}}, "are what the roles guarantee"),
    # Guarantees one may lower only knowingly (postgresql_allow_reserved_parameters).
    "md5": ({"postgresql_parameters": {"password_encryption": "md5"}}, "turn down TLS"),
    "tls-floor": ({"postgresql_parameters": {"ssl_min_protocol_version": "TLSv1"}}, "turn down TLS"),
    "audit-owned": ({"postgresql_parameters": {"log_connections": "off"}}, "are the audit trail's"),
    "patroni-ttl": ({"patroni_ttl": 10}, "Patroni settings refused"),
    "patroni-timing": (
        {"patroni_ttl": 20, "patroni_loop_wait": 10, "patroni_retry_timeout": 10},
        "must not exceed ttl",
    ),
    "sync-count-above-standbys": ({"patroni_synchronous": True}, "Synchronous replication needs 1 to 0"),
    "etcd-even": ({"etcd_election_timeout": 100}, "election timeout of 5 heartbeats"),
    "empty-etcd-group": ({}, "etcd needs members"),
}


def refuse(case, inventory):
    extra_vars, _ = BAD_INPUT[case]
    return run_playbook("site.yml", extra_vars, inventory=inventory if case == "empty-etcd-group" else None)


@pytest.fixture(scope="module")
def refusals(host, etcd_group_empty):
    """Every bad input, three runs at a time (each only reads: they are
    refused before any change), with the server's state before and after."""
    before = dropin_sum(host), started_at(host)
    context = multiprocessing.get_context("fork")  # each run in its own process environment
    with concurrent.futures.ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        runs = dict(zip(BAD_INPUT, pool.map(refuse, BAD_INPUT, [etcd_group_empty] * len(BAD_INPUT)), strict=True))
    return runs, before, (dropin_sum(host), started_at(host))


@pytest.mark.parametrize(("case"), list(BAD_INPUT))
def test_bad_input_is_refused_before_any_change(host, case, refusals):
    runs, before, after = refusals
    run, message = runs[case], BAD_INPUT[case][1]
    assert run.returncode != 0
    assert message in run.stdout
    assert recap_changed(run.stdout).get(host.backend.host, 0) == 0
    assert after == before


def test_lowering_a_guarantee_knowingly_is_allowed_with_a_warning(host):
    run = run_playbook(
        "playbooks/postgresql.yml",
        {
            "postgresql_parameters": {"ssl_min_protocol_version": "TLSv1.3"},
            "postgresql_allow_reserved_parameters": True,
        },
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "WARNING: postgresql_allow_reserved_parameters is true" in run.stdout
    assert setting(host, "ssl_min_protocol_version") == "TLSv1.3"


def test_value_postgresql_rejects_fails_loudly_and_server_keeps_running(host):
    before = started_at(host)
    run = run_playbook("playbooks/postgresql.yml", {"postgresql_parameters": {"log_min_duration_statement": "soon"}})
    assert run.returncode != 0
    assert "PostgreSQL rejected the new configuration" in run.stdout
    assert "log_min_duration_statement" in run.stdout
    assert started_at(host) == before
    assert psql(host, "SELECT 1") == "1"


def test_scenario_configuration_is_restored_and_stable(host):
    run = run_playbook("playbooks/postgresql.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert setting(host, "shared_buffers") == "512MB"
    assert setting(host, "ssl_min_protocol_version") == "TLSv1.2"
    overridden = (
        "SELECT count(*) FROM pg_settings WHERE name = 'log_min_duration_statement' AND source = 'configuration file'"
    )
    assert psql(host, overridden) == "0"
    again = run_playbook("site.yml")
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap_changed(again.stdout)[host.backend.host] == 0
    # The Deploy job template in check mode, as AWX launches it: clean, and
    # nothing would change.
    check = runner.launch_template("Deploy", Path(os.environ["MOLECULE_INVENTORY_FILE"]), None, True, job_timeout=900)
    assert check.status == "successful", check.stdout[-3000:]
    assert check.changed().get(host.backend.host) == 0, check.stdout[-3000:]
    assert max(check.changed().values()) == 0, check.stdout[-3000:]

"""The postgresql role's converged state, checked from inside the hosts and
by real clients over the lab network."""

import psycopg
import pytest

from pgops.testing import (
    PG_VERSION,
    TLS_DIR,
    connect,
    create_login_role,
    fetch_ca,
    host_address,
    psql,
    scram,
)

testinfra_hosts = ["ansible://postgresql"]

UNIT = f"postgresql@{PG_VERSION}-main"
CONF = f"/etc/postgresql/{PG_VERSION}/main"

# What the role computes for the scenario's 2048 MB / 2 CPU hosts, with the
# scenario's one override (work_mem). Written out so that a wrong formula fails.
EXPECTED_SETTINGS = {
    "shared_buffers": "512MB",
    "effective_cache_size": "1536MB",
    "maintenance_work_mem": "128MB",
    "work_mem": "8MB",
    "wal_buffers": "16MB",
    "min_wal_size": "1GB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "max_worker_processes": "8",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "1",
    "default_statistics_target": "100",
    "password_encryption": "scram-sha-256",
    "ssl": "on",
    "ssl_min_protocol_version": "TLSv1.2",
    "listen_addresses": "*",
    "max_connections": "200",
}


@pytest.fixture(scope="module")
def probe(host):
    role = create_login_role(host)
    yield role
    psql(host, f"DROP ROLE {role.name}")


@pytest.fixture(scope="module")
def ca(host, tmp_path_factory):
    return fetch_ca(host, tmp_path_factory.mktemp("ca"))


def test_service_running_and_enabled(host):
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_listens_on_all_addresses(host):
    assert host.socket("tcp://0.0.0.0:5432").is_listening


def test_one_cluster_with_data_checksums(host):
    clusters = host.check_output("pg_lsclusters --no-header").splitlines()
    assert len(clusters) == 1 and clusters[0].split()[:4] == [str(PG_VERSION), "main", "5432", "online"]
    assert psql(host, "SHOW data_checksums") == "on"


@pytest.mark.parametrize(("name", "value"), sorted(EXPECTED_SETTINGS.items()))
def test_tuned_setting_is_live(host, name, value):
    live, source = psql(
        host, f"SELECT current_setting('{name}'), coalesce(sourcefile, source) FROM pg_settings WHERE name = '{name}'"
    ).split("|")
    assert live == value
    assert source.endswith("conf.d/50-pgops.conf")


def test_configuration_is_a_managed_dropin(host):
    dropin = host.file(f"{CONF}/conf.d/50-pgops.conf")
    assert dropin.content_string.startswith("#")
    assert "Ansible managed" in dropin.content_string
    assert dropin.user == "postgres" and dropin.mode == 0o640
    # The cluster's own postgresql.conf is left as pg_createcluster wrote it.
    assert "Ansible managed" not in host.file(f"{CONF}/postgresql.conf").content_string
    assert psql(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


def test_pg_hba_has_no_trust_and_remote_is_tls_only(host):
    rules = psql(host, "SELECT type, auth_method, coalesce(error, '') FROM pg_hba_file_rules").splitlines()
    assert rules
    for rule in rules:
        kind, method, error = rule.split("|")
        assert error == ""
        assert method in {"peer", "scram-sha-256", "reject"}
        assert kind in {"local", "hostssl"}


def test_tls_key_is_private(host):
    key = host.file(f"{TLS_DIR}/server.key")
    assert key.user == "postgres" and key.mode == 0o600
    assert (
        not host.file("/etc/postgresql-common/pgops-ca/ca.key").exists
        or host.file("/etc/postgresql-common/pgops-ca/ca.key").mode == 0o600
    )


def test_remote_client_negotiates_tls_and_verifies_the_server(host, probe, ca):
    with connect(host_address(host), probe, ca, sslmode="verify-full") as conn:
        ssl, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl is True
    assert version in {"TLSv1.2", "TLSv1.3"}


def test_non_tls_remote_connection_is_refused(host, probe):
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(host_address(host), probe, None, sslmode="disable")


def test_wrong_password_is_refused(host, probe, ca):
    probe_wrong = type(probe)(probe.name, probe.password + "x")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(host_address(host), probe_wrong, ca)


def test_tls_below_minimum_version_is_refused(host, probe, ca):
    with pytest.raises(psycopg.OperationalError):
        connect(host_address(host), probe, ca, ssl_max_protocol_version="TLSv1.1")


def test_superuser_is_rejected_over_the_network(host, ca):
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        psycopg.connect(
            host=host_address(host),
            user="postgres",
            password="irrelevant",
            dbname="postgres",
            sslmode="verify-full",
            sslrootcert=str(ca),
            connect_timeout=5,
        )


def test_tls_between_lab_hosts(host, probe):
    """A client in one container reaches the other over TLS, verifying it."""
    other = next(h for h in ("molecule-pg1", "molecule-pg2") if h != host.backend.host)
    other_host = host.get_host(f"ansible://{other}", ansible_inventory=host.backend.ansible_inventory)
    other_address = host_address(other_host)
    cmd = (
        f"PGPASSWORD='{probe.password}' psql -XAtq "
        f"'host={other_address} dbname=postgres user={probe.name} sslmode=verify-full sslrootcert={TLS_DIR}/ca.crt' "
        "-c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
    )
    # The probe role exists on this host only; create it on the other one too.
    psql(other_host, f"CREATE ROLE {probe.name} LOGIN PASSWORD '{scram.scram_verifier(probe.password)}'")
    try:
        assert host.check_output(cmd) == "t"
    finally:
        psql(other_host, f"DROP ROLE {probe.name}")

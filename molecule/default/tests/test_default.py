"""One member converged by site.yml on the bare image: Patroni runs the
server, the configuration is the roles' drop-in, and real clients connect
over the lab network with TLS only."""

import psycopg
import pytest

from pgops.testing import (
    PATRONI_PORT,
    connect,
    create_login_role,
    fetch_ca,
    host_address,
    patroni_get,
    psql,
    setting,
)

# What the role computes for the scenario's 2048 MB / 2 CPU host, with the
# scenario's one override (work_mem). Written out so that a wrong formula fails.
DROPIN_SETTINGS = {
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
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "1",
    "default_statistics_target": "100",
    "password_encryption": "scram-sha-256",
    "ssl": "on",
    "ssl_min_protocol_version": "TLSv1.2",
}
# Patroni passes these on the postmaster's command line (the same on every
# member, from its global configuration).
COMMAND_LINE_SETTINGS = {"listen_addresses": "*", "max_connections": "200", "max_worker_processes": "8"}


@pytest.fixture(scope="module")
def probe(host):
    role = create_login_role(host)
    yield role
    psql(host, f"DROP ROLE {role.name}")


@pytest.fixture(scope="module")
def ca(host, tmp_path_factory):
    return fetch_ca(host, tmp_path_factory.mktemp("ca"))


def test_patroni_runs_the_server_and_debian_does_not(host):
    patroni = host.service("patroni")
    assert patroni.is_running and patroni.is_enabled
    assert host.service("etcd").is_running
    major = setting(host, "server_version_num")[:2]
    assert host.run(f"systemctl is-enabled postgresql@{major}-main").stdout.strip() == "masked"
    # The postmaster lives in Patroni's unit: stopping Patroni stops it.
    postmaster = host.file(f"{setting(host, 'data_directory')}/postmaster.pid").content_string.split()[0]
    assert host.file(f"/proc/{postmaster}/cgroup").content_string.rstrip().endswith("/patroni.service")


def test_the_member_leads_alone(host, ca):
    status, cluster = patroni_get(host_address(host), ca, "cluster")
    assert status == 200
    assert [(m["name"], m["role"], m["state"]) for m in cluster["members"]] == [
        (host.backend.host, "leader", "running")
    ]


def test_listens_on_all_addresses(host):
    assert host.socket("tcp://0.0.0.0:5432").is_listening
    assert host.socket(f"tcp://0.0.0.0:{PATRONI_PORT}").is_listening


def test_one_cluster_with_data_checksums(host):
    clusters = host.check_output("pg_lsclusters --no-header").splitlines()
    major = setting(host, "server_version_num")[:2]
    assert len(clusters) == 1 and clusters[0].split()[:4] == [major, "main", "5432", "online"]
    assert setting(host, "data_checksums") == "on"


def live(host, name):
    query = f"SELECT current_setting('{name}'), coalesce(sourcefile, source) FROM pg_settings WHERE name = '{name}'"
    return psql(host, query).split("|")


@pytest.mark.parametrize(("name", "value"), sorted(DROPIN_SETTINGS.items()))
def test_tuned_setting_is_live_from_the_dropin(host, name, value):
    assert live(host, name) == [value, f"{setting(host, 'config_file').rsplit('/', 1)[0]}/conf.d/50-pgops.conf"]


@pytest.mark.parametrize(("name", "value"), sorted(COMMAND_LINE_SETTINGS.items()))
def test_cluster_wide_setting_comes_from_patroni(host, name, value):
    assert live(host, name) == [value, "command line"]


def test_configuration_is_a_managed_dropin(host):
    confdir = setting(host, "config_file").rsplit("/", 1)[0]
    dropin = host.file(f"{confdir}/conf.d/50-pgops.conf")
    assert dropin.content_string.startswith("#")
    assert "Ansible managed" in dropin.content_string
    assert dropin.user == "postgres" and dropin.mode == 0o640
    # postgresql.conf is Patroni's; nothing of ours is written into it.
    main = host.file(setting(host, "config_file")).content_string
    assert "Patroni" in main and "Ansible managed" not in main
    assert psql(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


def test_pg_hba_has_no_trust_and_remote_is_tls_only(host):
    rules = psql(
        host,
        "SELECT type, auth_method, coalesce(error, ''), user_name::text, coalesce(address, '') FROM pg_hba_file_rules",
    ).splitlines()
    assert rules
    for rule in rules:
        kind, method, error, users, address = rule.split("|")
        assert error == ""
        assert method in {"peer", "scram-sha-256", "reject", "cert"}
        # A plain `host` line only rejects; a certificate only for the
        # pooler's lookup user, from loopback.
        assert kind in {"local", "hostssl"} or (kind == "host" and method == "reject")
        assert method != "cert" or (users == "{pgbouncer_auth}" and address in {"127.0.0.1", "::1"})
    assert host.file(setting(host, "hba_file")).mode == 0o600


def test_tls_key_is_private(host):
    key = host.file(setting(host, "ssl_key_file"))
    assert key.user == "postgres" and key.mode == 0o600


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

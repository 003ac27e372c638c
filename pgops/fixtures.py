"""Pytest fixtures the Molecule scenarios share (imported by their
conftest.py): a test harness login with direct privileges on the payments
tables, and connections to the payments database as that login over TLS.
Each needs the scenario's `host` fixture: testinfra's own in a one-member
scenario, the Patroni leader in the others, which import `cluster_ca`,
`leader_name` and `host` from here and give a session fixture `nodes` (their
members and addresses)."""

import pytest

from pgops import testing
from pgops.testing import connect, create_login_role, fetch_ca, host_address, member, patroni_leader, psql, s3_client

DB = "payments"


def scenario(nodes: dict[str, str], s3_endpoint: str):
    """What a multi-member scenario's conftest.py gives its suites, from its
    members (name: address) and its S3 endpoint: the `nodes` and `s3`
    fixtures, and member_whose_turn() and physical_backup(kind) on them."""

    @pytest.fixture(scope="session", name="nodes")
    def nodes_fixture():
        return nodes

    @pytest.fixture(scope="session", name="s3")
    def s3_fixture():
        """The scenario's S3 endpoint (moto on the network's gateway), as a client."""
        return s3_client(s3_endpoint)

    def member_whose_turn() -> str:
        return testing.member_whose_turn(nodes)

    def physical_backup(kind: str) -> str:
        return testing.physical_backup(kind, nodes)

    return nodes_fixture, s3_fixture, member_whose_turn, physical_backup


@pytest.fixture(scope="session")
def cluster_ca(nodes, tmp_path_factory):
    """The cluster CA, for clients on the controller (Patroni's REST API, PostgreSQL)."""
    return fetch_ca(member(next(iter(nodes))), tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="module")
def leader_name(nodes, cluster_ca):
    """The leader as Patroni says when the module starts."""
    return patroni_leader(nodes.values(), cluster_ca)


@pytest.fixture(scope="module")
def host(leader_name):
    """The leader's host (this replaces testinfra's per-host `host`)."""
    return member(leader_name)


@pytest.fixture(scope="module")
def tester(host):
    role = create_login_role(host, "schema_test")
    psql(
        host,
        f"GRANT CONNECT ON DATABASE payments TO {role.name};"
        f"GRANT USAGE ON SCHEMA payments, pgops TO {role.name};"
        f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA payments TO {role.name};"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA pgops TO {role.name};"
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA payments TO {role.name};"
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA payments TO {role.name};"
        f"GRANT USAGE ON SCHEMA partman TO {role.name};"
        f"GRANT SELECT ON partman.part_config TO {role.name};",
        db=DB,
    )
    yield role
    psql(host, f"REVOKE CONNECT ON DATABASE payments FROM {role.name}; DROP OWNED BY {role.name}", db=DB)
    psql(host, f"DROP ROLE {role.name}")


@pytest.fixture(scope="module")
def db(host, tester, tmp_path_factory):
    """A factory of autocommit connections to the payments database."""
    ca = fetch_ca(host, tmp_path_factory.mktemp("ca"))
    address = host_address(host)
    opened = []

    def open_connection(autocommit=True):
        conn = connect(address, tester, ca, dbname=DB, autocommit=autocommit)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()

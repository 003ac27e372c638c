"""Fixtures for the backup scenario: a leader and one standby (molecule.yml)
and the scenario's S3 endpoint. `host` is the leader, as Patroni says."""

import pytest

from pgops import fixtures, testing
from pgops.testing import S3_CA, LoginRole, bucket_keys, member, repo_info, s3_client, wait_archived  # noqa: F401

# The members and their addresses, and the S3 endpoint (molecule.yml).
NODES = {"backup1": "172.29.64.10", "backup2": "172.29.64.11"}
S3_ENDPOINT = "https://172.29.64.1:9002"
USERS = {"payments_app": LoginRole("m_app", "molecule-app-password-01")}

cluster_ca, leader_name, host = fixtures.cluster_ca, fixtures.leader_name, fixtures.host


@pytest.fixture(scope="session")
def nodes():
    return NODES


@pytest.fixture(scope="session")
def s3():
    return s3_client(S3_ENDPOINT)


def member_whose_turn() -> str:
    return testing.member_whose_turn(NODES)


def physical_backup(kind: str) -> str:
    return testing.physical_backup(kind, NODES)

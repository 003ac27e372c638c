"""Fixtures for the backup scenario: a leader and one standby (molecule.yml)
and the scenario's S3 endpoint. `host` is the leader, as Patroni says."""

from pgops import fixtures
from pgops.testing import S3_CA, LoginRole, bucket_keys, member, repo_info, wait_archived  # noqa: F401

# The members and their addresses, and the S3 endpoint (molecule.yml).
NODES = {"backup1": "172.29.64.10", "backup2": "172.29.64.11"}
S3_ENDPOINT = "https://172.29.64.1:9002"
USERS = {"payments_app": LoginRole("m_app", "molecule-app-password-01")}

cluster_ca, leader_name, host = fixtures.cluster_ca, fixtures.leader_name, fixtures.host
nodes, s3, member_whose_turn, physical_backup = fixtures.scenario(NODES, S3_ENDPOINT)

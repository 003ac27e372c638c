"""The scenario's S3 endpoint (moto on the network's gateway), as a client."""

import boto3
import pytest


@pytest.fixture(scope="session")
def s3():
    return boto3.client(
        "s3",
        endpoint_url="http://172.29.63.1:9001",
        region_name="us-east-1",
        aws_access_key_id="molecule-only-access-key",
        aws_secret_access_key="molecule-only-secret-key",
    )

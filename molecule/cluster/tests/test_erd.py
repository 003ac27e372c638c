"""The committed ERD (docs/) matches the live schema."""

from pathlib import Path

from pgops import erd
from pgops.testing import fetch_ca, host_address

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_committed_erd_matches_the_live_catalog(host, tester, tmp_path):
    ca = fetch_ca(host, tmp_path)
    dsn = (
        f"host={host_address(host)} dbname=payments user={tester.name} password={tester.password} "
        f"sslmode=verify-full sslrootcert={ca}"
    )
    catalog = erd.fetch_with_dsn(dsn)
    assert len(catalog["tables"]) >= 15
    assert erd.stale(catalog, DOCS) == [], "the schema changed: run `make erd` and commit docs/"

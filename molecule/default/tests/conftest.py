"""Fixtures for the one-member scenario: testinfra's `host` is its only
member, and the shared harness login and connections come from pgops.
test_reconfigure runs last: it ends with the re-run of site.yml (changed=0)
and the Deploy job in check mode, after everything the others changed."""

from pathlib import Path

from pgops import fixtures

tester = fixtures.tester
db = fixtures.db

ORDER = ["test_default", "test_migrations", "test_upgrade", "test_reconfigure"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = Path(str(item.fspath)).stem
        return ORDER.index(name) if name in ORDER else len(ORDER) - 1.5

    items.sort(key=rank)  # stable: a module keeps its own order

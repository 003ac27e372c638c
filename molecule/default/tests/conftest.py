"""Fixtures for the one-member scenario: testinfra's `host` is its only
member, and the shared harness login and connections come from pgops."""

from pgops import fixtures

tester = fixtures.tester
db = fixtures.db

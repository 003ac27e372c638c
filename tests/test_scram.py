"""SCRAM verifiers made on the controller match the ones PostgreSQL makes."""

import base64

from pgops.testing import load_filter

scram = load_filter("pgops_scram")

# Made by PostgreSQL 15: CREATE ROLE r PASSWORD 'correct-horse-battery'.
SERVER_MADE = (
    "SCRAM-SHA-256$4096:vML0xX6ITZXIj9O8wbbhLQ==$T6Se2xiZ9+nmWxf3tNeuETH8Lt1MQQeqjFVqk/8Ekto="
    ":dKI4sBdfUr4OX9gw0hTcWdBnd5I9TUklQ095ENESIig="
)


def test_same_salt_gives_the_servers_verifier():
    salt = base64.b64decode("vML0xX6ITZXIj9O8wbbhLQ==")
    assert scram.scram_verifier("correct-horse-battery", salt=salt) == SERVER_MADE


def test_matches_only_the_right_password():
    assert scram.scram_matches(SERVER_MADE, "correct-horse-battery")
    assert not scram.scram_matches(SERVER_MADE, "correct-horse-batterY")
    assert not scram.scram_matches("md5abcdef", "correct-horse-battery")
    assert not scram.scram_matches("", "correct-horse-battery")


def test_keeps_the_current_verifier_when_the_password_is_unchanged():
    assert scram.scram_verifier("correct-horse-battery", SERVER_MADE) == SERVER_MADE


def test_new_password_gets_a_new_salted_verifier():
    a = scram.scram_verifier("another-password-123", SERVER_MADE)
    b = scram.scram_verifier("another-password-123")
    assert a != SERVER_MADE and a != b  # random salts
    assert scram.scram_matches(a, "another-password-123") and scram.scram_matches(b, "another-password-123")

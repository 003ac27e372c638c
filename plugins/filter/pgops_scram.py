"""SCRAM-SHA-256 verifiers computed on the controller, so that a login user's
plaintext password is never sent to the server inside SQL text (where
log_statement and pgaudit would write it to the logs).

`password | pgops.scram_verifier(current)` returns `current` when it already
verifies `password` (so a re-run changes nothing), else a new verifier with a
random salt, in the format PostgreSQL stores in pg_authid.rolpassword:
SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (RFC 5802/7677).
Passwords are printable ASCII (checked by the role), for which PostgreSQL's
SASLprep normalisation is the identity."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

VERIFIER_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")
ITERATIONS = 4096  # PostgreSQL's scram_iterations default


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a stored verifier was made from this password."""
    m = VERIFIER_RE.match(verifier or "")
    if not m:
        return False
    stored_key, server_key = _keys(password, base64.b64decode(m.group(2)), int(m.group(1)))
    return hmac.compare_digest(stored_key, base64.b64decode(m.group(3))) and hmac.compare_digest(
        server_key, base64.b64decode(m.group(4))
    )


def scram_verifier(password: str, current: str = "", iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """`current` if it verifies `password`, else a new verifier."""
    if scram_matches(current, password):
        return current
    salt = salt if salt is not None else os.urandom(16)
    stored_key, server_key = _keys(password, salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class FilterModule:
    def filters(self):
        return {"scram_verifier": scram_verifier}

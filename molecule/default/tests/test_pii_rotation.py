"""Rotating the PII key: every host gets the new key (owner-only), existing
ciphertext is re-encrypted under it, names still decrypt, a re-run changes
nothing, and the key never appears in the playbook's output."""

import secrets

from pgops.testing import psql, recap_changed, run_playbook

OLD_KEY = "molecule-only-pii-key-0123456789abcdef"
NEW_KEY = "molecule-rotated-pii-key-" + secrets.token_hex(8)
ROTATION = {"schema_pii_keys": {"1": OLD_KEY, "2": NEW_KEY}, "schema_pii_key_version": 2}


def test_rotation_reencrypts_every_customer(host, db):
    conn = db()
    name = f"rotation_{secrets.token_hex(4)}"
    conn.execute(
        "SELECT payments.create_customer(%s, %s, %s, %s)",
        (name, "rotation password 1", f"{name}@example.test", "Rosa Rotation"),
    )
    before = conn.execute("SELECT full_name_enc FROM payments.customer WHERE username = %s", (name,)).fetchone()[0]
    assert conn.execute("SELECT count(*) FROM payments.customer WHERE full_name_key_version = 1").fetchone()[0] > 0

    # Check mode says what it would do and changes nothing (and ends: every
    # batch is rolled back there, so the batch loop must not run).
    check = run_playbook("playbooks/pii_rotate.yml", ROTATION, check=True)
    assert check.returncode == 0, check.stdout[-3000:]
    assert "would be re-encrypted" in check.stdout
    assert conn.execute("SELECT count(*) FROM payments.customer WHERE full_name_key_version = 1").fetchone()[0] > 0

    run = run_playbook("playbooks/pii_rotate.yml", ROTATION)
    assert run.returncode == 0, run.stdout[-3000:]
    assert NEW_KEY not in run.stdout and OLD_KEY not in run.stdout  # ansible-runner merges stderr into stdout

    key_file = host.file("/etc/postgresql/pgops-pii/pii-key-2")
    assert key_file.user == "postgres" and key_file.mode == 0o400

    conn = db()
    assert conn.execute("SELECT count(*) FROM payments.customer WHERE full_name_key_version <> 2").fetchone()[0] == 0
    after, clear = conn.execute(
        "SELECT full_name_enc, payments.pii_decrypt(full_name_enc, full_name_key_version) "
        "FROM payments.customer WHERE username = %s",
        (name,),
    ).fetchone()
    assert clear == "Rosa Rotation" and bytes(after) != bytes(before)

    again = run_playbook("playbooks/pii_rotate.yml", ROTATION)
    assert again.returncode == 0
    assert max(recap_changed(again.stdout).values()) == 0


def test_an_installed_key_is_never_replaced(host):
    """Giving version 2 another value would make every row encrypted with it
    unreadable: refused on every host, nothing changed, the key not shown."""
    before = host.file("/etc/postgresql/pgops-pii/pii-key-2").sha256sum
    other = "molecule-other-pii-key-" + secrets.token_hex(8)
    # The same directory spelled differently changes nothing to that.
    for directory in ("/etc/postgresql/pgops-pii", "/etc/postgresql/pgops-pii/"):
        bad = {**ROTATION, "schema_pii_keys": {"1": OLD_KEY, "2": other}, "schema_pii_key_dir": directory}
        run = run_playbook("playbooks/pii_rotate.yml", bad)
        assert run.returncode != 0
        assert "PII key version(s) 2 are installed with another value" in run.stdout
        assert other not in run.stdout and NEW_KEY not in run.stdout
        assert max(recap_changed(run.stdout).values()) == 0
    assert host.file("/etc/postgresql/pgops-pii/pii-key-2").sha256sum == before


def test_reencryption_is_not_executable_by_anyone_but_the_superuser(host):
    assert (
        psql(host, "SELECT proowner::regrole FROM pg_proc WHERE proname = 'pii_reencrypt'", db="payments")
        == "pii_keyholder"
    )
    for group in ("admin", "developer", "payments_app", "readonlyuser", "pii_reader"):
        allowed = psql(
            host,
            f"SELECT has_function_privilege('{group}', 'payments.pii_reencrypt(integer)', 'EXECUTE')",
            db="payments",
        )
        assert allowed == "f", group


def test_rotating_back_leaves_the_cluster_as_the_inventory_says(host, db):
    """Later suites re-run site.yml with the scenario's inventory (key 1):
    rotate back to it, which is a rotation like any other."""
    run = run_playbook("playbooks/pii_rotate.yml", {**ROTATION, "schema_pii_key_version": 1})
    assert run.returncode == 0, run.stdout[-3000:]
    conn = db()
    assert conn.execute("SELECT count(*) FROM payments.customer WHERE full_name_key_version <> 1").fetchone()[0] == 0
    assert psql(host, "SELECT value FROM pgops.config WHERE name = 'pii_key_version'", db="payments") == "1"

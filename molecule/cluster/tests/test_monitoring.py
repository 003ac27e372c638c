"""Monitoring end to end: Prometheus on the monitoring host scrapes every
member's exporters and Patroni, the exporters answer that host only and
expose no secret, and real faults reach Alertmanager's webhook (a listener
on the controller): a stopped standby, S3 cut off from the leader, a row in
a default partition, 20 failed logins. Each alert but the last resolves
once the fault is undone (the login alert looks back five minutes).

The bound on an alert's arrival is its rule's `for:` plus the time to see
the fault and to send it: one scrape interval until a scrape sees it (and
one more when the scrape must time out, as on a stopped host), one
evaluation interval until a rule evaluation does, and Alertmanager's
group_wait, or its group_interval when an earlier test left a group of that
alert behind (molecule.yml sets both). A failing archive command also takes
its own time to fail: pgBackRest's archive-push waits for its asynchronous
archiver up to archive-timeout (backup_archive_push_timeout, 30 s in
molecule.yml) before it reports the failure to PostgreSQL.

Whatever happens, the fault test undoes its faults and waits for a healthy
cluster whose archive has caught up before it asserts anything, so one late
alert fails one test, not the fault trials after it."""

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import urlopen

import psycopg
import pytest
import yaml
from conftest import NODES, S3_ENDPOINT, wait_healthy

from pgops.faults import docker, in_container, sql_in, wait_until
from pgops.testing import (
    LoginRole,
    connect,
    plant_default_partition_row,
    remove_default_partition_rows,
    s3_cut_rule,
)

MONITOR = "cluster-monitor"
PROMETHEUS = "http://172.29.62.20:9090"
WEBHOOK = ("172.29.62.1", 9095)  # molecule.yml monitoring_webhook_url
# The exporters role's defaults: PostgreSQL and node (TLS, login), mtail and
# PgBouncer's exporter (neither: the IP filter only).
EXPORTER_PORTS = (9187, 9100, 3903, 9127)
SCENARIO = yaml.safe_load((Path(__file__).resolve().parents[1] / "molecule.yml").read_text())
INTERVAL = 5  # molecule.yml monitoring_scrape_interval (scrapes and rule evaluations)
GROUP_WAIT = 10  # the role's monitoring_group_wait
GROUP_INTERVAL = 10  # molecule.yml monitoring_group_interval
RULES = yaml.safe_load((Path(__file__).resolve().parents[3] / "roles/monitoring/files/alerts.yml").read_text())


def rule_for(alert: str) -> int:
    """The rule's `for:` in seconds."""
    rule = next(r for g in RULES["groups"] for r in g["rules"] if r["alert"] == alert)
    text = rule.get("for", "0s")
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


ARCHIVE_ATTEMPT = {"WalArchivingFailing": 30}  # archive-push's wait for the asynchronous archiver


def arrival_bound(alert: str) -> int:
    return rule_for(alert) + 3 * INTERVAL + max(GROUP_WAIT, GROUP_INTERVAL) + ARCHIVE_ATTEMPT.get(alert, 0)


def prometheus(path: str):
    with urlopen(f"{PROMETHEUS}{path}", timeout=10) as response:  # noqa: S310 (the scenario's fixed http URL)
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture(scope="module")
def webhook():
    """Alertmanager's receiver: every notification, with the controller's
    monotonic time it arrived."""
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((time.monotonic(), payload))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(WEBHOOK, Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield received
    server.shutdown()
    server.server_close()


def notified(received, alert: str, status: str, since: float, **labels) -> float | None:
    """When the first notification of `alert` in `status` (firing or
    resolved) with these labels arrived after `since`."""
    for at, payload in list(received):
        for a in payload["alerts"]:
            if (
                at >= since
                and a["labels"].get("alertname") == alert
                and a["status"] == status
                and all(a["labels"].get(k) == v for k, v in labels.items())
            ):
                return at
    return None


def test_every_target_is_up():
    """Six jobs (the PostgreSQL, node and PgBouncer exporters, failed logins, Patroni, etcd) on every member."""

    def targets():
        active = prometheus("/api/v1/targets?state=active")["activeTargets"]
        return active if len(active) == 6 * len(NODES) and all(t["health"] == "up" for t in active) else None

    active = wait_until(targets, 60, "every target up", interval=INTERVAL)
    assert {(t["labels"]["job"], t["labels"]["member"]) for t in active} == {
        (job, member) for job in ("postgres", "node", "logins", "pgbouncer", "patroni", "etcd") for member in NODES
    }
    # Every PgBouncer exporter reads its console (not only answers).
    consoles = prometheus("/api/v1/query?query=pgbouncer_up")["result"]
    assert sorted((r["metric"]["member"], r["value"][1]) for r in consoles) == [(m, "1") for m in sorted(NODES)]


def test_every_rule_is_loaded_with_its_runbook():
    loaded = [r for g in prometheus("/api/v1/rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for g in RULES["groups"] for r in g["rules"])
    assert all(r["annotations"]["runbook_url"].startswith("https://") for r in loaded)


def monitor_fetch(url: str, login: bool) -> tuple[int, str]:
    """GET from the monitoring host, verifying TLS with the cluster CA it holds."""
    script = (
        "import base64, ssl, sys, urllib.error, urllib.request\n"
        "ctx = ssl.create_default_context(cafile='/etc/pgops/monitoring/tls/ca.crt')\n"
        "req = urllib.request.Request(sys.argv[1])\n"
        "if sys.argv[2] == 'yes':\n"
        "    token = base64.b64encode(('prometheus:' + sys.argv[3]).encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + token)\n"
        "try:\n"
        "    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:\n"
        "        print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
    )
    password = SCENARIO["provisioner"]["inventory"]["group_vars"]["monitoring"]["monitoring_scrape_password"]
    out = docker("exec", MONITOR, "python3", "-c", script, url, "yes" if login else "no", password).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_etcd_metrics_need_a_certificate_from_the_cluster_ca():
    """etcd's metrics listener asks for a client certificate, as its client port does."""
    for address in NODES.values():
        script = (
            "import ssl, sys, urllib.request\n"
            "tls = '/etc/pgops/monitoring/tls/'\n"
            "ctx = ssl.create_default_context(cafile=tls + 'ca.crt')\n"
            "if sys.argv[2] == 'yes':\n"
            "    ctx.load_cert_chain(tls + 'prometheus.crt', tls + 'prometheus.key')\n"
            "try:\n"
            "    urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10); print('served')\n"
            "except Exception as e: print('refused', type(e).__name__)\n"
        )
        url = f"https://{address}:2381/metrics"
        assert docker("exec", MONITOR, "python3", "-c", script, url, "no").stdout.startswith("refused")
        assert docker("exec", MONITOR, "python3", "-c", script, url, "yes").stdout.startswith("served")


def test_exporters_answer_the_monitoring_host_only():
    for address in NODES.values():
        for port in EXPORTER_PORTS:
            # From the controller (not in exporters_allowed_networks): dropped.
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=1).close()
        # From the monitoring host: TLS, and a login is required (mtail and
        # PgBouncer's exporter have neither: only the IP filter admits the
        # monitoring host).
        for port in EXPORTER_PORTS[:2]:
            assert monitor_fetch(f"https://{address}:{port}/metrics", login=False)[0] == 401
        for port in EXPORTER_PORTS[2:]:
            assert monitor_fetch(f"http://{address}:{port}/metrics", login=False)[0] == 200


def secrets_of_the_scenario():
    """Every password and key molecule.yml gives the roles."""
    found = []

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and any(w in key for w in ("password", "key", "secret")) and len(value) >= 8:
            found.append(value)

    walk(SCENARIO["provisioner"]["inventory"])
    return found


def test_metrics_expose_no_password_key_or_pii():
    secrets = secrets_of_the_scenario()
    assert len(secrets) > 10  # the walk found them
    for address in NODES.values():
        for port in EXPORTER_PORTS:
            scheme = "https" if port in EXPORTER_PORTS[:2] else "http"
            status, body = monitor_fetch(f"{scheme}://{address}:{port}/metrics", login=True)
            assert status == 200
            leaked = [s for s in secrets if s in body]
            assert not leaked, f"{address}:{port} exposes {len(leaked)} secret(s)"
            assert "PRIVATE KEY" not in body
            assert "@example.test" not in body  # the customers' e-mail addresses
    first = next(iter(NODES.values()))
    _, body = monitor_fetch(f"https://{first}:9187/metrics", login=True)
    assert "pgops_partition_premade{" in body and "pgops_archiver_failing" in body
    # PgBouncer's exporter read the console (its certificate login worked)
    # and reports the application's pool.
    _, body = monitor_fetch(f"http://{first}:9127/metrics", login=True)
    assert "\npgbouncer_up 1.0" in body
    assert 'pgbouncer_databases_database_pool_size{backend_database="payments",database="payments"}' in body


def test_backups_and_drills_report_their_outcome():
    """The jobs record each run for the node exporter: the earlier suites
    took every kind of backup through their services (Backup now) and ran a
    restore drill that passed, so neither backup nor drill alert is pending.
    (A failed drill's own metric is proven in the backup scenario.)"""
    since = time.time() - 3600

    def values(metric: str) -> dict:
        result = prometheus(f"/api/v1/query?query={metric}")["result"]
        return {r["metric"].get("kind", ""): float(r["value"][1]) for r in result}

    backups = values("max+by+(kind)+(pgops_backup_last_success_timestamp_seconds)")
    assert set(backups) == {"logical", "full", "diff", "incr"} and min(backups.values()) > since, backups
    assert values("max+by+(kind)+(pgops_backup_max_age_seconds)") == {
        "logical": 26 * 3600,
        "full": 170 * 3600,
        "diff": 50 * 3600,
        "incr": 26 * 3600,
    }
    passed = values("max(pgops_restore_drill_last_success_timestamp_seconds)")[""]
    assert passed > since
    pending = {a["labels"]["alertname"] for a in prometheus("/api/v1/alerts")["alerts"]}
    assert not pending & {"BackupTooOld", "RestoreDrillFailed", "RestoreDrillNotRun"}, pending


def test_faults_fire_their_alerts_and_resolve(host, cluster_ca, webhook):
    """Four faults at once, each with its own alert: a standby stopped,
    S3 cut off from the leader (its archiver fails), a row in the default
    partition of payments.transaction, 20 wrong passwords at the leader."""
    leader = host.backend.host
    standby = sorted(n for n in NODES if n != leader)[0]
    rule = s3_cut_rule(host, S3_ENDPOINT)
    expected = {
        "PostgresMemberDown": {"member": standby},
        "WalArchivingFailing": {"instance": f"{NODES[leader]}:{EXPORTER_PORTS[0]}"},
        "PartitionDefaultHasRows": {"parent": "payments.transaction"},
        "LoginFailureBurst": {"instance": f"{NODES[leader]}:{EXPORTER_PORTS[2]}"},
    }
    started = {}  # when each fault was in place
    docker("stop", standby)
    started["PostgresMemberDown"] = first = time.monotonic()
    subprocess.run(["iptables", "-I", *rule], check=True)
    planted = False
    try:
        plant_default_partition_row(host, "monitoring_probe")
        planted = True
        started["PartitionDefaultHasRows"] = time.monotonic()
        for _ in range(20):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                connect(NODES[leader], LoginRole("m_reader", "not-the-password"), cluster_ca, dbname="payments")
        started["LoginFailureBurst"] = time.monotonic()
        # WAL to archive: the archiver tries (and fails) at each segment switch.
        for _ in range(3):
            in_container(leader, "runuser -u postgres -- psql -XAtq -c 'SELECT pg_switch_wal(), txid_current()'")
        started["WalArchivingFailing"] = time.monotonic()
        fired = {}
        for alert, labels in expected.items():
            at = wait_until(
                lambda a=alert, lb=labels: notified(webhook, a, "firing", first, **lb),
                arrival_bound(alert) + 60, f"{alert} at the webhook",
            )  # fmt: skip
            fired[alert] = round(at - started[alert], 1)
        print("seconds from fault to webhook:", fired)
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
        try:
            if planted:
                remove_default_partition_rows(host)
        finally:
            docker("start", standby)
            undone = time.monotonic()
            wait_healthy(cluster_ca, timeout=240)
            wait_until(lambda: archive_caught_up(leader), 240, "the leader's archive caught up")
    for alert, labels in expected.items():
        if alert == "LoginFailureBurst":
            continue
        wait_until(
            lambda a=alert, lb=labels: notified(webhook, a, "resolved", undone, **lb),
            180, f"{alert} resolved at the webhook", interval=INTERVAL,
        )  # fmt: skip
    assert all(fired[a] <= arrival_bound(a) for a in expected), {a: arrival_bound(a) for a in expected}


def archive_caught_up(member: str) -> bool:
    """No WAL segment waits for the archiver on `member` (its archive has
    no gap once S3 is back)."""
    ready = sql_in(member, "SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') AS f WHERE f LIKE '%.ready'")
    return ready == "0"


def test_the_webhook_got_no_secret(webhook):
    everything = json.dumps([payload for _, payload in webhook])
    assert not [s for s in secrets_of_the_scenario() if s in everything]

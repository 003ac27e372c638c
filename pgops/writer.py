"""A client that writes continuously through a libpq multi-host connection
string and records every commit the server acknowledged: used to prove that
no acknowledged commit is lost across failover and switchover, and to
measure how long writes pause."""

from __future__ import annotations

import threading
import time

import psycopg

TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS pgops_write_probe (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
)


class AckWriter(threading.Thread):
    """Inserts increasing ids, one transaction each. `acked` holds (id,
    monotonic time) of every commit that returned; a commit that failed or
    whose outcome is unknown is not in it (and is retried under a new id)."""

    def __init__(self, conninfo: str, interval: float = 0.01, first_id: int | None = None):
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.interval = interval
        self.acked: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        # Ids from the clock (microseconds), so that successive writers never collide.
        self._next = first_id if first_id is not None else int(time.time() * 1_000_000)

    def run(self):
        conn = None
        while not self._halt.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True)
                n = self._next
                self._next += 1
                conn.execute("INSERT INTO pgops_write_probe (id) VALUES (%s)", (n,))
                self.acked.append((n, time.monotonic()))
            except psycopg.Error as e:
                self.errors.append(type(e).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self):
        self._halt.set()
        self.join(timeout=30)

    def acked_since(self, moment: float) -> int:
        return sum(1 for _, t in self.acked if t > moment)

    def wait_for(self, count: int, since: float = 0.0, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.acked_since(since) >= count:
                return True
            time.sleep(0.1)
        return False

    def first_ack_after(self, moment: float) -> float | None:
        return next((t for _, t in self.acked if t > moment), None)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest gap between acknowledged commits in [start, end]."""
        times = [start] + [t for _, t in self.acked if start <= t <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def multi_host_conninfo(
    addresses, *, user, password, ca, dbname="postgres", attrs="read-write", timeout=2, port=5432
) -> str:
    """A libpq string over every member that lands on the primary. TCP
    keepalives and tcp_user_timeout make a client notice within seconds a
    server that vanished from the network (a cut leaves its connection
    silent, not closed): what docs/high-availability.md asks of clients."""
    hosts = ",".join(addresses)
    ports = ",".join(str(port) for _ in addresses)
    return (
        f"host={hosts} port={ports} dbname={dbname} user={user} password={password} sslmode=verify-full "
        f"sslrootcert={ca} target_session_attrs={attrs} connect_timeout={timeout} "
        "keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3 tcp_user_timeout=5000"
    )


AUTHORIZE = (
    "SELECT transaction_id, created_at, status, replayed FROM payments.authorize(%(merchant)s::bigint, %(key)s, "
    "%(customer)s::bigint, %(method)s::bigint, %(amount)s::bigint, 'EUR'::char(3), '198.51.100.7'::inet, 'mobile', "
    "0.1::numeric, 'model-1')"
)


class PaymentClient(threading.Thread):
    """An application that authorizes payments through payments.authorize(),
    one fresh idempotency key per payment. A call whose outcome it did not see
    (an error, the connection lost mid-commit) is retried with the same key
    until an answer comes back, as a payment API must do. `answers` maps every
    key it used to the (id, created_at, status, replayed) it was told;
    `retried` holds the keys that needed a retry. An SQL error other than a
    lost connection or a read-only server is an answer too: it goes to
    `failures`, and the client moves on."""

    def __init__(self, conninfo: str, payer: dict, prefix: str, interval: float = 0.02, give_up_after: float = 120):
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.payer = payer
        self.prefix = prefix
        self.interval = interval
        self.give_up_after = give_up_after
        self.answers: dict[str, tuple] = {}
        self.retried: set[str] = set()
        self.unanswered: list[str] = []
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self):
        conn = None
        n = 0
        while not self._halt.is_set():
            key = f"{self.prefix}-{n}"
            n += 1
            args = {**self.payer, "key": key, "amount": 100 + n}
            deadline = time.monotonic() + self.give_up_after
            while True:  # until this key has an answer
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.conninfo, autocommit=True)
                    self.answers[key] = conn.execute(AUTHORIZE, args).fetchone()
                    break
                except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction):
                    self.retried.add(key)
                    if conn is not None:
                        conn.close()
                    conn = None
                    if time.monotonic() > deadline:
                        self.unanswered.append(key)
                        break
                    time.sleep(0.2)
                except psycopg.Error as e:
                    self.failures.append(f"{key}: {type(e).__name__}: {e}")
                    break
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self):
        self._halt.set()
        self.join(timeout=self.give_up_after + 10)

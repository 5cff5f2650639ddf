"""Two complete mail servers side by side, for tests of mail between them (operations.md "Two servers").

Use it from a test module with

    pytest_plugins = ["tests.instances"]

    def test_something(instances):
        a, b = instances.a, instances.b          # a.test on 127.0.0.2, b.test on 127.0.0.3
        smtplib.SMTP(a.address, a.submission_port) ...
        [raw] = b.wait_for_messages("bob@b.test")

or, to change the defaults, the factory:

    def test_other(start_instances):
        pair = start_instances(env={"MAIL_QUEUE_RETRY_DELAYS": "1"}, mailboxes={"a": {"carol@a.test": "pw"}},
                               commands=("runsmtp", "qcluster"))

Each instance is `runsmtp` + `runsubmission` + `qcluster` (or the `commands` given; `runpop3`
too, or later with `Instance.start_process`) with its OWN database (a copy of a
database migrated once per test session: a SQLite file copy, or on PostgreSQL a
`CREATE DATABASE ... TEMPLATE`), its own MAIL_DATA_DIR and MAIL_HOSTNAME (mx.a.test, mx.b.test),
MAIL_DNS_SERVERS pointing at a test DNS server (`instances.dns`, whose records a test may change),
the same MAIL_REMOTE_SMTP_PORT for both (the port both MX listeners use; `instances.smtp_port`,
also free on 127.0.0.4 for a scripted third peer) and MAIL_ALLOW_PRIVATE_DESTINATIONS=1. Each has
its own django-q2 queue name, so two instances never take each other's tasks even on one Redis.

`Instance.manage(...)` runs a management command against one instance; `Instance.messages(address)`
and `Instance.wait_for_messages(address, n)` read a mailbox straight from that instance's
database and body store, and `Instance.query(sql, params)` runs any SQL there (`%s` placeholders).
Logs of every process are in `Instance.log_dir`; `Instance.logs()` returns them for assertions
and failure messages.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import ROOT, ServerProcess, free_port, manage, wait_for_port, wait_until
from tests.dnsserver import TestDNSServer

# The loopback addresses of the instances and of a third, scripted peer (tests/smtppeer.py).
ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3"}
PEER_ADDRESS = "127.0.0.4"
DEFAULT_MAILBOXES = {"a": {"alice@a.test": "alice-password"}, "b": {"bob@b.test": "bob-password"}}

# Short timeouts: a test waits seconds, never the production minutes.
TEST_ENV = {
    "MAIL_SMTP_CONNECT_TIMEOUT": "3",
    "MAIL_SMTP_CLIENT_TIMEOUT": "5",
    "MAIL_DNS_TIMEOUT": "3",
    "MAIL_AUTH_FAILURE_DELAY": "0.2",
    "MAIL_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    # No quarantine digests: qcluster would mail one to each mailbox with held mail within a
    # scheduler tick, a message the tests that count a mailbox's messages do not expect (the
    # digests have tests of their own).
    "MAIL_DIGEST_INTERVAL": "0",
}


def dns_records() -> dict[str, dict[str, list]]:
    """a.test and b.test, each with one MX on its instance's address."""
    records: dict[str, dict[str, list]] = {}
    for name, address in ADDRESSES.items():
        records[f"{name}.test"] = {"MX": [(10, f"mx.{name}.test")]}
        records[f"mx.{name}.test"] = {"A": [address]}
    return records


def common_port(addresses: list[str]) -> int:
    """A TCP port free on every one of `addresses` (both MX listeners must share it)."""
    return free_port(*addresses)


def _base_env() -> dict[str, str]:
    """The parent's environment without what would point a child at the test's own database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "DATABASE_URL", "PYTEST_"))}
    env.update(TEST_ENV)
    return env


# --- databases ---------------------------------------------------------------------------------


class DatabaseFactory:
    """Makes a fresh, migrated database per instance from a template migrated once per session."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.vendor = connection.vendor
        self.made: list[str] = []
        self.template = ""
        if self.vendor == "postgresql":
            sd = connection.settings_dict
            self.pg = {
                "user": sd["USER"] or "",
                "password": sd.get("PASSWORD") or "",
                "host": sd["HOST"] or "127.0.0.1",
                "port": str(sd["PORT"] or 5432),
            }

    def url(self, name: str) -> str:
        if self.vendor == "sqlite":
            return f"sqlite:///{name}"
        from urllib.parse import quote

        auth = quote(self.pg["user"]) + (":" + quote(self.pg["password"]) if self.pg["password"] else "")
        return f"postgres://{auth}@{self.pg['host']}:{self.pg['port']}/{name}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(dbname="postgres", autocommit=True, **self.pg) as conn:
            conn.execute(sql)

    def prepare_template(self) -> None:
        if self.vendor == "sqlite":
            self.template = str(self.workdir / "template.sqlite3")
        elif self.vendor == "postgresql":
            self.template = f"mailinst_tmpl_{uuid.uuid4().hex[:12]}"
            self._admin(f'CREATE DATABASE "{self.template}"')
        else:
            raise RuntimeError(f"two-instance tests do not support {self.vendor}")
        env = _base_env()
        env["DATABASE_URL"] = self.url(self.template)
        env["MAIL_DATA_DIR"] = str(self.workdir / "template-mail")
        result = manage("migrate", "--no-input", "-v", "0", env=env, timeout=180)
        if result.returncode:
            raise RuntimeError(f"migrating the instance template failed:\n{result.stderr}")

    def create(self, label: str) -> str:
        """A new database for one instance; returns its DATABASE_URL."""
        if self.vendor == "sqlite":
            path = self.workdir / f"{label}-{uuid.uuid4().hex[:8]}.sqlite3"
            # The backup API copies a consistent image even though the template runs in WAL mode.
            with sqlite3.connect(self.template) as source, sqlite3.connect(path) as target:
                source.backup(target)
            self.made.append(str(path))
            return self.url(str(path))
        name = f"mailinst_{label}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return self.url(name)

    def drop(self, url_or_name: str) -> None:
        if self.vendor == "postgresql":
            self._admin(f'DROP DATABASE IF EXISTS "{url_or_name}" WITH (FORCE)')

    def close(self) -> None:
        if self.vendor == "postgresql":
            for name in [*self.made, self.template]:
                self.drop(name)


@pytest.fixture(scope="session")
def instance_databases(tmp_path_factory):
    """The session's database factory: the template is migrated on first use only."""
    factory = DatabaseFactory(tmp_path_factory.mktemp("instance-dbs"))
    yield factory
    factory.close()


# --- instances ---------------------------------------------------------------------------------


# The server processes of an instance, and the port each listens on (an Instance attribute).
LISTENERS = {"runsmtp": "smtp_port", "runsubmission": "submission_port", "runpop3": "pop3_port"}
COMMANDS = ("runsmtp", "runsubmission", "qcluster")


@dataclass
class Instance:
    """One complete server: its address, ports, environment and processes."""

    name: str
    domain: str
    address: str
    hostname: str
    smtp_port: int
    submission_port: int
    database_url: str
    data_dir: Path
    log_dir: Path
    env: dict[str, str]
    pop3_port: int = 0
    commands: tuple[str, ...] = COMMANDS
    processes: list[ServerProcess] = field(default_factory=list)

    # -- commands

    def manage(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `manage.py ARGS` against this instance, as its operator would."""
        return manage(*args, stdin=stdin, env=self.env, timeout=timeout)

    def provision(self, domains: list[str], mailboxes: dict[str, str]) -> subprocess.Popen:
        """Create domains and mailboxes in one child process (started, not waited for)."""
        script = (
            "import sys, json\n"
            "from mailcore.services import accounts\n"
            "domains, mailboxes = json.loads(sys.stdin.read())\n"
            "for d in domains: accounts.add_domain(d)\n"
            "for a, p in mailboxes.items(): accounts.add_mailbox(a, p)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        proc.stdin.write(json.dumps([domains, mailboxes]))
        proc.stdin.close()
        proc.stdin = None  # communicate() would flush the closed pipe and raise ValueError
        return proc

    def submit(self, sender: str, recipients: list[str], content: bytes, password: str = "", timeout: float = 30) -> None:
        """Send `content` through this instance's submission port from laptop.<domain>, logged in as
        `sender` (with `password`, else `<local part>-password`, as the tests' mailboxes have)."""
        with smtplib.SMTP(self.address, self.submission_port, timeout=timeout) as client:
            client.ehlo(f"laptop.{self.domain}")
            client.login(sender, password or sender.partition("@")[0] + "-password")
            client.sendmail(sender, recipients, content)

    def launch(self, command: str) -> ServerProcess:
        """Start one server process (it listens where the environment's MAIL_*_BIND says), not waiting for it."""
        server = ServerProcess([command], self.env, self.log_dir / f"{command}.log").start()
        self.processes.append(server)
        return server

    def wait_listening(self, server: ServerProcess) -> None:
        """Return once `server` accepts on its port (a server without one: at once)."""
        command = server.args[0]
        if command in LISTENERS:
            try:
                wait_for_port(self.address, getattr(self, LISTENERS[command]), proc=server.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{self.name}: {command} did not start: {exc}\n{self.logs()}") from None

    def start_process(self, command: str) -> ServerProcess:
        """One more server process of this instance, listening; stopped with the others."""
        server = self.launch(command)
        self.wait_listening(server)
        return server

    def start(self) -> None:
        """Every process of `commands`, all started before any is waited for."""
        for server in [self.launch(command) for command in self.commands]:
            self.wait_listening(server)

    def stop(self) -> None:
        stop_instances([self])

    def process(self, command: str) -> ServerProcess:
        return next(p for p in self.processes if p.args[0] == command)

    def log_of(self, command: str) -> str:
        return (self.log_dir / f"{command}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("*.log")))

    # -- looking inside

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run SQL against this instance's database; write placeholders as %s."""
        if self.database_url.startswith("sqlite:///"):
            with sqlite3.connect(self.database_url[len("sqlite:///"):], timeout=20) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        import psycopg

        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://", 1)) as conn:
            return conn.execute(sql, params).fetchall()

    def messages(self, address: str, state: str = "inbox") -> list[bytes]:
        """The stored bodies delivered to one mailbox, oldest first."""
        rows = self.query(
            "SELECT m.body_ref FROM mailcore_delivery d"
            " JOIN mailcore_message m ON m.id = d.message_id"
            " JOIN mailcore_mailbox b ON b.id = d.mailbox_id"
            " WHERE b.address = %s AND d.state = %s ORDER BY d.id",
            (address, state),
        )
        return [self.body(ref) for (ref,) in rows]

    def body(self, ref: str) -> bytes:
        """A stored body: a slice of a segment file (`seg:<file>:<offset>:<length>`) or a file of its own."""
        if ref.startswith("seg:"):
            name, offset, length = ref[4:].rsplit(":", 2)
            with open(self.data_dir / name, "rb") as f:
                f.seek(int(offset))
                return f.read(int(length))
        return (self.data_dir / ref).read_bytes()

    def wait_for_messages(self, address: str, count: int = 1, timeout: float = 20.0, state: str = "inbox") -> list[bytes]:
        """The mailbox's messages once it has `count` of them."""
        wait_until(lambda: len(self.messages(address, state)) >= count, timeout, interval=0.1)
        found = self.messages(address, state)
        if len(found) < count:
            raise AssertionError(f"{address} on {self.name}: {len(found)} of {count} messages after {timeout} s\n{self.logs()}")
        return found

    def queue(self) -> list[dict]:
        """The outbound queue rows: recipient, state, attempts, last_reply, mail_from."""
        rows = self.query(
            "SELECT q.recipient, q.state, q.attempts, q.last_reply, m.mail_from FROM mailcore_queueitem q"
            " JOIN mailcore_message m ON m.id = q.message_id ORDER BY q.id"
        )
        return [dict(zip(("recipient", "state", "attempts", "last_reply", "mail_from"), r, strict=True)) for r in rows]

    def wait_for_queue(self, predicate, timeout: float = 20.0) -> list[dict]:
        """The queue once `predicate(rows)` holds."""

        def matched() -> list[list[dict]]:
            rows = self.queue()
            return [rows] if predicate(rows) else []

        found = wait_until(matched, timeout, interval=0.1)
        if not found:
            raise AssertionError(f"queue of {self.name} never matched: {self.queue()}\n{self.logs()}")
        return found[0]


def make_instance(
    name: str, domain: str, address: str, hostname: str, database_url: str, workdir: Path, dns_address: str, smtp_port: int,
    env: dict[str, str], kind: type[Instance] = Instance, **fields,
) -> Instance:
    """An instance, not started: the tests' environment (TEST_ENV) with its own database, store,
    hostname, DNS server and addresses, then `env`; its store and logs under `workdir`."""
    data_dir = workdir / f"{name}-mail"
    log_dir = workdir / f"{name}-logs"
    log_dir.mkdir(parents=True)
    submission_port, pop3_port = free_port(address), free_port(address)
    child_env = _base_env()
    child_env.update(
        DATABASE_URL=database_url,
        MAIL_DATA_DIR=str(data_dir),
        MAIL_HOSTNAME=hostname,
        MAIL_DNS_SERVERS=dns_address,
        MAIL_REMOTE_SMTP_PORT=str(smtp_port),
        MAIL_ALLOW_PRIVATE_DESTINATIONS="1",
        # Outbound mail leaves from the instance's own address, as SPF's `mx` expects.
        MAIL_SMTP_SOURCE_ADDRESS=address,
        MAIL_SMTP_BIND=f"{address}:{smtp_port}",
        MAIL_SUBMISSION_BIND=f"{address}:{submission_port}",
        MAIL_POP3_BIND=f"{address}:{pop3_port}",
        MAIL_Q_NAME=f"mailtest-{name}-{uuid.uuid4().hex[:10]}",
    )
    child_env.update(env)
    return kind(
        name, domain, address, hostname, smtp_port, submission_port, database_url, data_dir, log_dir, child_env,
        pop3_port=pop3_port, **fields,
    )


def provision(plan: list[tuple[Instance, list[str], dict[str, str]]]) -> None:
    """Create each instance's domains and mailboxes, (instance, domains, mailboxes), all at once."""
    running = [(instance, instance.provision(domains, mailboxes)) for instance, domains, mailboxes in plan]
    for instance, proc in running:
        _, err = proc.communicate(timeout=60)
        if proc.returncode:
            raise RuntimeError(f"provisioning {instance.name} failed:\n{err}")


def stop_instances(instances: list[Instance]) -> None:
    """Stop every process of `instances`: all asked at once (each takes seconds to wind down), then each waited for."""
    for instance in instances:
        for server in instance.processes:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.terminate()  # SIGTERM to the main process only (qcluster hangs otherwise)
    for instance in instances:
        for server in instance.processes:
            server.stop()


def assert_pulled_by_b(copy: bytes, original: bytes) -> bytes:
    """Check B's copy of a message it pulled from A: B's trace headers, saying so, then the original
    byte for byte. Returns the trace headers."""
    trace, rest = copy[: len(copy) - len(original)], copy[len(copy) - len(original):]
    assert rest == original
    assert trace.startswith(b"Return-Path: <alice@a.test>\r\n")
    assert (
        b"Authentication-Results: mx.b.test; x-source=pass smtp.mailfrom=alice@a.test"
        b" (retrieved from mx.a.test [127.0.0.2]);\r\n\tspf=" in trace
    )
    assert b"Received: from mx.a.test (" in trace and b"by mx.b.test with ESMTP" in trace
    return trace


@dataclass
class InstancePair:
    a: Instance
    b: Instance
    dns: TestDNSServer
    smtp_port: int  # MAIL_REMOTE_SMTP_PORT of both; free on `peer_address` too
    peer_address: str = PEER_ADDRESS  # where a scripted third server may listen on `smtp_port`

    def __iter__(self):
        return iter((self.a, self.b))

    def route_to_peer(self, domain: str) -> None:
        """Give `domain` one MX, mx.<domain>, on the peer address."""
        self.dns.records[domain] = {"MX": [(10, f"mx.{domain}")]}
        self.dns.records[f"mx.{domain}"] = {"A": [self.peer_address]}

    @contextmanager
    def peer_for(self, domain: str, peer):
        """`peer` (tests/smtppeer.py, tests/source_peer.py) listening as `domain`'s MX, for the duration."""
        self.route_to_peer(domain)
        peer.start(self.peer_address, self.smtp_port)
        try:
            yield peer
        finally:
            peer.stop()


@pytest.fixture
def dns_server():
    """A test DNS server with a.test and b.test; records may be added by the test (TTL 0: nothing cached)."""
    with TestDNSServer(dns_records(), ttl=0) as server:
        yield server


@pytest.fixture
def start_instances(instance_databases, dns_server, tmp_path):
    """Factory: start the two instances, with optional extra settings, mailboxes and server processes."""
    started: list[Instance] = []
    made_dbs: list[str] = []

    def start(
        env: dict[str, str] | None = None, mailboxes: dict[str, dict[str, str]] | None = None, commands: tuple[str, ...] = COMMANDS
    ) -> InstancePair:
        if not instance_databases.template:
            instance_databases.prepare_template()
        smtp_port = common_port([*ADDRESSES.values(), PEER_ADDRESS])
        instances = []
        for name, address in ADDRESSES.items():
            database_url = instance_databases.create(name)
            made_dbs.append(database_url)
            instances.append(
                make_instance(
                    name, f"{name}.test", address, f"mx.{name}.test", database_url, tmp_path, dns_server.address, smtp_port,
                    env or {}, commands=commands,
                )
            )
        boxes = {**DEFAULT_MAILBOXES, **(mailboxes or {})}
        provision([(i, [i.domain], boxes.get(i.name, {})) for i in instances])
        for instance in instances:
            started.append(instance)
            instance.start()
        return InstancePair(instances[0], instances[1], dns_server, smtp_port)

    yield start
    stop_instances(started)
    for url in made_dbs:
        if instance_databases.vendor == "postgresql":
            instance_databases.drop(url.rsplit("/", 1)[1])
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(url[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
    for instance in started:
        shutil.rmtree(instance.data_dir, ignore_errors=True)


@pytest.fixture
def instances(start_instances) -> InstancePair:
    """a.test (alice@a.test / alice-password) on 127.0.0.2 and b.test (bob@b.test / bob-password) on 127.0.0.3."""
    return start_instances()

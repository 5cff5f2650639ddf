"""Two nodes of one domain sharing PostgreSQL, Redis and an S3 bucket, and b.test beside them (docs/scaling.md).

    pytest_plugins = ["tests.s3_server", "tests.cluster"]

    def test_something(cluster):
        cluster.node1, cluster.node2     # a.test on 127.0.0.2 and 127.0.0.12, both MX hosts of a.test
        cluster.b                        # b.test on 127.0.0.3, a server of its own

Each node is `runsmtp`, `runsubmission`, `runpop3` and `qcluster` with the same DATABASE_URL (a
PostgreSQL database made for the cluster from a template migrated once per test session), the
same REDIS_URL, MAIL_Q_NAME and cache prefix (one django-q2 cluster, one failed-login count),
and the same bucket of the S3 test endpoint (tests/s3_server.py); only its addresses, hostname
and MAIL_DATA_DIR (which keeps no bodies) are its own. The Redis is a `redis-server` of the
tests' own on a free port, never the machine's: a fault test restarts it.

PostgreSQL is the one at MAIL_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432, trust
auth). Where it, redis-server or moto cannot be started the tests are skipped with the reason;
under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import end_process, free_port, require_program, unavailable, wait_for_port
from tests.dnsserver import TestDNSServer
from tests.instances import COMMANDS, DatabaseFactory, Instance, common_port, make_instance, provision, stop_instances

NODE_ADDRESSES = {"node1": "127.0.0.2", "node2": "127.0.0.12"}
B_ADDRESS = "127.0.0.3"
MAILBOXES = {
    "a.test": {f"{name}@a.test": f"{name}-password" for name in ("alice", "carol", "dave", "erin", "frank", "grace")},
    "b.test": {"bob@b.test": "bob-password"},
}


def dns_records() -> dict[str, dict[str, list]]:
    """a.test with two MX hosts, node 2 preferred (so a peer's GET goes there whichever node
    sourced the message), and b.test with one."""
    return {
        "a.test": {"MX": [(10, "mx2.a.test"), (20, "mx1.a.test")]},
        "mx1.a.test": {"A": [NODE_ADDRESSES["node1"]]},
        "mx2.a.test": {"A": [NODE_ADDRESSES["node2"]]},
        "b.test": {"MX": [(10, "mx.b.test")]},
        "mx.b.test": {"A": [B_ADDRESS]},
    }


# --- the shared services -----------------------------------------------------------------------


class PostgresDatabases(DatabaseFactory):
    """DatabaseFactory on the PostgreSQL server of MAIL_TEST_POSTGRES, whatever the test process itself uses."""

    def __init__(self, workdir: Path, url: str):
        self.workdir = workdir
        self.vendor = "postgresql"
        self.made = []
        self.template = ""
        parts = urlsplit(url)
        self.pg = {
            "user": parts.username or "postgres",
            "password": parts.password or "",
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or 5432),
        }

    def reachable(self) -> str | None:
        """None, or why the server cannot be used."""
        try:
            import psycopg

            with psycopg.connect(dbname="postgres", connect_timeout=3, **self.pg):
                return None
        except Exception as exc:  # psycopg missing, refused, auth
            return f"PostgreSQL at {self.pg['host']}:{self.pg['port']} cannot be used: {exc}".strip()


class RedisServer:
    """A redis-server of the tests' own, without persistence, on a free loopback port."""

    def __init__(self, log_path: Path):
        self.program = require_program("redis-server")
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", self.port, proc=self.proc, timeout=20)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            unavailable(f"redis-server did not start: {exc}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)


@pytest.fixture(scope="session")
def cluster_databases(tmp_path_factory):
    factory = PostgresDatabases(tmp_path_factory.mktemp("cluster-dbs"), os.environ.get("MAIL_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432"))
    why = factory.reachable()
    if why:
        unavailable(why)
    yield factory
    factory.close()


# --- nodes -------------------------------------------------------------------------------------


@dataclass
class Node(Instance):
    """One server of the cluster (or b.test): an Instance with runpop3 too; bodies in the bucket when `bucket` is set."""

    commands: tuple[str, ...] = (*COMMANDS, "runpop3")
    s3: object = None
    bucket: str = ""

    def body(self, ref: str) -> bytes:
        return self.s3.get(self.bucket, ref) if self.bucket else super().body(ref)


@dataclass
class Cluster:
    node1: Node
    node2: Node
    b: Node
    dns: TestDNSServer
    smtp_port: int
    redis: RedisServer
    s3: object
    bucket: str

    @property
    def nodes(self) -> list[Node]:
        return [self.node1, self.node2]

    def stop(self) -> None:
        stop_instances([self.node1, self.node2, self.b])


def start_cluster(databases: PostgresDatabases, s3, redis: RedisServer, workdir: Path, env: dict[str, str] | None = None) -> Cluster:
    """Start node 1, node 2 and b.test; the caller stops them (Cluster.stop)."""
    if not databases.template:
        databases.prepare_template()
    dns = TestDNSServer(dns_records())
    dns.__enter__()
    smtp_port = common_port([*NODE_ADDRESSES.values(), B_ADDRESS])
    shared_db = databases.create("cluster")
    b_db = databases.create("b")
    bucket = s3.new_bucket()
    queue = f"cluster-{uuid.uuid4().hex[:10]}"

    # Small nodes, quick to stop: one SMTP process and one task worker each, two seconds of grace.
    node_env = {"MAIL_SMTP_PROCESSES": "1", "MAIL_Q_WORKERS": "1", "MAIL_POP3_SHUTDOWN_GRACE": "2", "MAIL_SMTP_SHUTDOWN_GRACE": "2"}

    def node(name: str, address: str, hostname: str, domain: str, database_url: str, extra: dict[str, str]) -> Node:
        return make_instance(
            name, domain, address, hostname, database_url, workdir, dns.address, smtp_port, {**node_env, **extra, **(env or {})},
            kind=Node, s3=s3, bucket=extra.get("MAIL_S3_BUCKET", ""),
        )

    shared = {"REDIS_URL": redis.url, "MAIL_Q_NAME": queue, "MAIL_CACHE_PREFIX": queue, **s3.env(bucket)}
    node1 = node("node1", NODE_ADDRESSES["node1"], "mx1.a.test", "a.test", shared_db, shared)
    node2 = node("node2", NODE_ADDRESSES["node2"], "mx2.a.test", "a.test", shared_db, shared)
    b_queue = f"b-{uuid.uuid4().hex[:10]}"
    b = node("b", B_ADDRESS, "mx.b.test", "b.test", b_db, {"REDIS_URL": redis.url, "MAIL_Q_NAME": b_queue, "MAIL_CACHE_PREFIX": b_queue})
    cluster = Cluster(node1, node2, b, dns, smtp_port, redis, s3, bucket)
    try:
        provision([(node1, ["a.test"], MAILBOXES["a.test"]), (b, ["b.test"], MAILBOXES["b.test"])])
        for server in (node1, node2, b):
            server.start()
    except BaseException:
        cluster.stop()
        dns.__exit__(None, None, None)
        raise
    return cluster


def stop_cluster(cluster: Cluster, databases: PostgresDatabases) -> None:
    cluster.stop()
    cluster.dns.__exit__(None, None, None)
    databases.drop(cluster.node1.database_url.rsplit("/", 1)[1])
    databases.drop(cluster.b.database_url.rsplit("/", 1)[1])
    for node in (cluster.node1, cluster.node2, cluster.b):
        shutil.rmtree(node.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(cluster_databases, s3_endpoint, tmp_path_factory):
    """One cluster for every test of the `cluster` xdist group (they run in one worker, in file
    order): each test uses mailboxes and client addresses of its own, and a fault test puts back
    what it broke. Its Redis is its own; the S3 endpoint is the worker's, paused only within a test."""
    workdir = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(workdir / "redis.log").start()
    try:
        # A hung store costs a message two seconds (one try), and the queue is swept every minute.
        env = {"MAIL_QUEUE_SWEEP_MINUTES": "1", "MAIL_S3_TIMEOUT": "2", "MAIL_S3_MAX_ATTEMPTS": "1"}
        started = start_cluster(cluster_databases, s3_endpoint, redis, workdir, env=env)
        yield started
        stop_cluster(started, cluster_databases)
    finally:
        redis.stop()

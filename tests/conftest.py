"""Fixtures shared by the whole suite: isolated message stores, and real server processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from tests.factories import alice, b_test, mx  # noqa: F401  (fixtures of every test)
from tests.programs import (  # noqa: F401  (re-exported: tests import them from here)
    MISSING_PROGRAM,
    end_process,
    program_packages,
    require_program,
    unavailable,
)
from tests.sockets import free_port, wait_for_port, wait_until  # noqa: F401  (re-exported: tests import them from here)

ROOT = Path(__file__).resolve().parent.parent


def cache_prefix(data_dir: Path) -> str:
    """A cache key prefix of one test: every test logs in from 127.0.0.1, so failed-login counts
    (kept in the shared cache, one Redis for all xdist workers in CI) must not leak between tests."""
    return "test-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]


FAST_HASHER = "django.contrib.auth.hashers.MD5PasswordHasher"


@pytest.fixture
def fast_password_hashing(settings):
    """MD5 instead of the production hasher, and a short failure delay, where logins are not what is tested."""
    settings.PASSWORD_HASHERS = [FAST_HASHER]
    settings.MAIL_AUTH_FAILURE_DELAY = 0.05


@pytest.fixture(autouse=True)
def mail_store(settings, tmp_path):
    """Each test gets its own body store and cache namespace, so no test sees another's files or counts."""
    data_dir = tmp_path / "mail"
    settings.MAIL_DATA_DIR = data_dir
    settings.STORAGES = {
        **settings.STORAGES,
        "mailbodies": {
            "BACKEND": "mailcore.store.backends.DurableFileSystemStorage",
            "OPTIONS": {"location": str(data_dir)},
        },
    }
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "KEY_PREFIX": cache_prefix(data_dir)}}
    settings.MAIL_AUTH_CHECKS = False  # as in child_env: no lookups in the machine's own DNS
    return data_dir


@pytest.fixture(autouse=True)
def empty_dns_cache():
    """No test sees another's cached DNS answers: test DNS servers come and go on reused ports."""
    from mailcore import dnscache

    dnscache.forget_all()


def self_signed_cert(directory: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate and key for a TLS listener of the tests (openssl req, P-256)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            require_program("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
            "-addext", f"subjectAltName=DNS:{common_name},DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def pytest_terminal_summary(terminalreporter) -> None:
    """One line naming the packages whose absence skipped tests, so a newcomer knows what to install."""
    packages: set[str] = set()
    skipped = 0
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        match = MISSING_PROGRAM.search(reason)
        if match:
            skipped += 1
            packages.add(match.group(1))
    if skipped:
        names = " ".join(sorted(packages))
        terminalreporter.write_line(
            f"{skipped} tests skipped because programs are not installed: apt-get install {names} "
            "(as root, `make test` installs them)",
            yellow=True,
        )


def database_url() -> str:
    """A DATABASE_URL that points a child process at the database this test is using."""
    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{sd['NAME']}"
    auth = quote(sd["USER"] or "")
    if sd.get("PASSWORD"):
        auth += ":" + quote(sd["PASSWORD"])
    return f"postgres://{auth}@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"


def child_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a server process that shares this test's database and body store."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        MAIL_DATA_DIR=str(data_dir),
        MAIL_HOSTNAME="mx.test.example",
        MAIL_CACHE_PREFIX=cache_prefix(data_dir),
        # Its own django-q2 queue too: with the Redis broker the queue is shared by every process
        # of the run, and a child's qcluster must not take tasks that other tests enqueued.
        MAIL_Q_NAME=cache_prefix(data_dir),
        PYTHONUNBUFFERED="1",
        # No SPF/DKIM/DMARC lookups in the machine's own DNS: a lone server has no test DNS
        # server. The two instances of tests/instances.py check everything against theirs.
        MAIL_AUTH_CHECKS="0",
    )
    if settings.PASSWORD_HASHERS[:1] == [FAST_HASHER]:  # fast_password_hashing made this test's users
        env["DJANGO_SETTINGS_MODULE"] = "tests.fast_hasher_settings"
    env.update(extra)
    return env


class ServerProcess:
    """A `manage.py <command>` child process; stopped with SIGTERM, killed if it hangs."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, wait: tuple[str, int] | None = None) -> ServerProcess:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for_port(*wait, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        try:
            return end_process(self.proc, sig, timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, count: int = 1, seconds: float = 10.0) -> str:
        """The log once `text` stands in it `count` times (log lines come after the fact); fails if it never does."""
        if not wait_until(lambda: self.output().count(text) >= count, seconds):
            raise AssertionError(f"{text!r} not {count} times in the log of {self.args[0]}:\n{self.output()}")
        return self.output()


@pytest.fixture
def server_factory(tmp_path, mail_store):
    """Start `manage.py` server commands that share this test's database and store."""
    servers: list[ServerProcess] = []

    def start(*args: str, wait: tuple[str, int] | None = None, **env: str) -> ServerProcess:
        log_path = tmp_path / f"{args[0]}-{len(servers)}.log"
        server = ServerProcess(list(args), child_env(mail_store, **env), log_path).start(wait)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def manage(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run a management command in a child process, as an operator would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `xdist_group(NAME)` run in one worker under `--dist loadgroup` (pytest.ini).

    pytest-xdist names the group in the node id (`...::test@NAME`) by setting `item._nodeid`, which
    pytest 9 no longer reads (a node's id is `item._id`), so the tests of a group were spread over
    the workers, each starting what the group shares (the two-node cluster): it is done here.
    """
    if not getattr(config.option, "loadgroup", False):  # set in each worker under --dist loadgroup
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")) for mark in marks})
        if names and "@" not in item.nodeid.rpartition("]")[2] and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")

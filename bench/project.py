"""The project's own processes for the benchmark: a fresh migrated database, mailboxes, listeners.

A template database is migrated and provisioned once per benchmark run (mailboxes, and the
5,000-message POP3 mailbox); every measured server starts on a fresh copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.sockets import free_port, wait_for_port  # noqa: F401  (bench.run calls project.free_port)

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "bench.test"
SMTP_USER = "bench"
RETR_USER = "retr"
LOGIN_USERS = [f"pop{i:02d}" for i in range(20)]
PASSWORD = "bench-password-1"

PROVISION = """
import hashlib, json, os, sys
from django.conf import settings
from mailcore.models import Delivery, Mailbox, Message
from mailcore.services import accounts
from mailcore.store import message_store
spec = json.loads(sys.stdin.read())
accounts.add_domain(spec["domain"])
for user in spec["users"]:
    accounts.add_mailbox(f"{user}@{spec['domain']}", spec["password"])
retr = Mailbox.objects.get(address=f"{spec['retr']}@{spec['domain']}")
body = bytes.fromhex(spec["body"])
messages = []
contents = [body.replace(b"Message-ID: <0@bench.test>", f"Message-ID: <{i}@bench.test>".encode()) for i in range(spec["count"])]
# Stored as the inbound path stores a group commit's bodies (segments, or files of their own).
for start in range(0, len(contents), 64):
    for content, stored in zip(contents[start:start + 64], message_store().put_many(contents[start:start + 64])):
        messages.append(Message(body_ref=stored.ref, size=stored.size, sha256=stored.sha256,
            mail_from="sender@example.test", rcpt_tos=[retr.address], transport="data", verification="unverified"))
Message.objects.bulk_create(messages, batch_size=500)
Delivery.objects.bulk_create([Delivery(message=m, mailbox=retr) for m in messages], batch_size=500)
"""


def message_bytes(size: int, index: int = 0) -> bytes:
    """A plain RFC 5322 message of about `size` octets: 76-character lines, CRLF."""
    head = (
        "From: Sender <sender@example.test>\r\nTo: <retr@bench.test>\r\nSubject: benchmark\r\n"
        f"Message-ID: <{index}@bench.test>\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n"
    ).encode()
    line = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 3)[:74] + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def base_env(workdir: Path, db: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=f"sqlite:///{db}",
        MAIL_DATA_DIR=str(data_dir),
        MAIL_HOSTNAME="mx.bench.test",
        MAIL_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        # Caps far above what the benchmark opens: it measures cost, not the caps.
        MAIL_SMTP_MAX_CONNECTIONS="20000",
        MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="20000",
        MAIL_POP3_MAX_CONNECTIONS="20000",
        MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT="20000",
        MAIL_POP3_PLAINTEXT="always",
        MAIL_AUTH_FAILURE_DELAY="0",
        # Each login is counted as a possible failure until its password is judged: 20 clients
        # logging in at once from one address would otherwise pass the failure limit.
        MAIL_AUTH_MAX_FAILURES="100000",
    )
    env.update(extra)
    return env


def manage(args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


class Template:
    """The migrated, provisioned database and body store that each fresh server starts from."""

    def __init__(self, workdir: Path, retr_count: int, retr_size: int):
        self.workdir = workdir
        self.db = workdir / "template.sqlite3"
        self.data_dir = workdir / "template-mail"
        self.retr_count, self.retr_size = retr_count, retr_size
        self.copies = 0

    def build(self) -> None:
        env = base_env(self.workdir, self.db, self.data_dir)
        manage(["migrate", "--no-input", "-v", "0"], env)
        spec = {
            "domain": DOMAIN, "users": [SMTP_USER, RETR_USER, *LOGIN_USERS], "password": PASSWORD,
            "retr": RETR_USER, "count": self.retr_count, "body": message_bytes(self.retr_size).hex(),
        }
        manage(["shell", "-c", PROVISION], env, stdin=json.dumps(spec))
        self.data_dir.mkdir(parents=True, exist_ok=True)  # no bodies when no mailbox was filled

    def fresh(self, label: str) -> tuple[Path, Path]:
        """A copy of the template: (database, body store). Bodies are hard links: never written."""
        self.copies += 1
        db = self.workdir / f"{label}-{self.copies}.sqlite3"
        data_dir = self.workdir / f"{label}-{self.copies}-mail"
        with sqlite3.connect(self.db) as source, sqlite3.connect(db) as target:
            source.backup(target)
        subprocess.run(["cp", "-al", str(self.data_dir), str(data_dir)], check=True)
        return db, data_dir


class Process:
    """A child process of the benchmark (a `manage.py` command or a script), stopped by SIGTERM."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log_file = open(log, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    @classmethod
    def manage(cls, args: list[str], env: dict[str, str], log: Path) -> Process:
        return cls([sys.executable, str(ROOT / "manage.py"), *args], env, log)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


INBOX_COUNT = (
    "SELECT COUNT(*) FROM mailcore_delivery d JOIN mailcore_mailbox b ON b.id = d.mailbox_id"
    " WHERE b.address = '{address}' AND d.state = 'inbox'"
)
# Task results that qcluster saved: its first scheduler pass, 30 s after it starts, runs every
# schedule that is due at once (all of them on a fresh database) and saves each one's result.
TASKS_DONE = "SELECT COUNT(*) FROM django_q_task"


def count_inbox(db: Path, address: str) -> int:
    return SqliteCopy.query(db, INBOX_COUNT.format(address=address))


def remove_copy(db: Path, data_dir: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".writer-lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.rmtree(str(db) + "-qcluster-stats", ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)


class SqliteCopy:
    """A fresh copy of the template on SQLite, with the ORM broker and the database cache: `make run`'s shape."""

    label = "SQLite + ORM broker"

    def __init__(self, workdir: Path, template: Template, label: str):
        self.workdir, self.template, self.name = workdir, template, label

    def create(self) -> dict[str, str]:
        self.db, self.data_dir = self.template.fresh(self.name)
        return base_env(self.workdir, self.db, self.data_dir)

    def scalar(self, sql: str) -> int:
        return self.query(self.db, sql)

    def count_inbox(self, address: str) -> int:
        return self.scalar(INBOX_COUNT.format(address=address))

    def drop(self) -> None:
        remove_copy(self.db, self.data_dir)

    @staticmethod
    def query(db: Path, sql: str) -> int:
        with sqlite3.connect(db, timeout=30) as conn:
            (value,) = conn.execute(sql).fetchone()
        return value


class PostgresCopy:
    """A fresh PostgreSQL database (127.0.0.1:5432, trust auth) with the SMTP user, and Redis as the
    broker and cache: the many-node shape of operations.md (`--database postgres`)."""

    label = "PostgreSQL + Redis"

    def __init__(self, workdir: Path, label: str, redis_url: str):
        self.workdir = workdir
        self.name = f"mailbench_{label}_{os.getpid()}".replace("-", "_")
        self.url = f"postgres://postgres@127.0.0.1:5432/{self.name}"
        self.data_dir = workdir / f"{self.name}-mail"
        self.redis_url = redis_url

    def create(self) -> dict[str, str]:
        self._psql(f"DROP DATABASE IF EXISTS {self.name}")
        self._psql(f"CREATE DATABASE {self.name}")
        env = base_env(self.workdir, Path("unused"), self.data_dir, DATABASE_URL=self.url, REDIS_URL=self.redis_url,
                       MAIL_Q_NAME=self.name)
        manage(["migrate", "--no-input", "-v", "0"], env)
        spec = {"domain": DOMAIN, "users": [SMTP_USER, RETR_USER], "password": PASSWORD, "retr": RETR_USER,
                "count": 0, "body": ""}
        manage(["shell", "-c", PROVISION], env, stdin=json.dumps(spec))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return env

    def scalar(self, sql: str) -> int:
        return int(self._psql(sql, database=self.name).strip())

    def count_inbox(self, address: str) -> int:
        return self.scalar(INBOX_COUNT.format(address=address))

    def drop(self) -> None:
        self._psql(f"DROP DATABASE IF EXISTS {self.name}")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @staticmethod
    def available() -> bool:
        try:
            PostgresCopy._psql("SELECT 1")
            return True
        except (OSError, subprocess.CalledProcessError):
            return False

    @staticmethod
    def _psql(sql: str, database: str = "postgres") -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-tAc", sql],
                              check=True, capture_output=True, text=True).stdout

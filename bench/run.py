"""`make bench`: the project's real listeners against a bare aiosmtpd (and, with --peers, Postfix and Dovecot).

Every figure is the median [min-max] of several rounds; every ratio is taken within one round,
against a baseline measured in that same round, because only same-run ratios mean anything on a
noisy machine. All traffic stays on loopback addresses. Prints one table at the end and writes the
raw figures to var/bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import clients, peers, project, pull_body, two_nodes  # noqa: E402
from bench.project import DOMAIN, LOGIN_USERS, PASSWORD, RETR_USER, SMTP_USER, Process  # noqa: E402

HOST = "127.0.0.1"
SIZES = {"1 KB": 1024, "10 KB": 10 * 1024, "100 KB": 100 * 1024}
SESSIONS = (1, 10, 50)


# Messages each SMTP server gets before a round's measurements (counted in the mailbox too).
WARM_UP = 50


# Messages per SMTP measurement (x --scale): a few seconds each at these rates, so that a full
# `make bench` (2 rounds, both databases, every size and session count) stays near 20 minutes on
# a 2-core VM; longer measurements (--scale 3 gives runs 10 to 14's 1,000/2,000/3,000) are
# steadier, shorter ones are decided by a single stall of the VM.
MESSAGES = {1: 200, 10: 600, 50: 1000}
# How long Postfix may take to deliver what it accepted before the next measurement starts.
DRAIN_SECONDS = 120


def messages_for(sessions: int, scale: float) -> int:
    return max(sessions * 2, int(MESSAGES[sessions] * scale))


def wait_for_delivery(postfix: peers.Postfix | None, accepted: int) -> None:
    """Until Postfix has delivered to the Maildir what it accepted (or DRAIN_SECONDS have passed).

    Postfix acknowledges once a message is in its queue and delivers it afterwards; without this
    wait that delivery would run during the next measurement, whichever server it measures.
    """
    if postfix is None:
        return
    deadline = time.monotonic() + DRAIN_SECONDS
    while postfix.delivered() < accepted and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class Row:
    section: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    note: str = ""


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, section: str, name: str, unit: str, value: float, load: float | None = None) -> Row:
        row = self.rows.setdefault((section, name), Row(section, name, unit))
        row.values.append(value)
        if load is not None:
            row.loads.append(load)
        return row

    def ratio(self, section: str, name: str, baseline: str, value: float, base: float) -> None:
        if base:
            self.rows[(section, name)].ratios[baseline].append(value / base)

    def note(self, section: str, name: str, text: str) -> None:
        row = self.rows.get((section, name))
        if row is not None and text not in row.note:
            row.note = (row.note + "; " + text).strip("; ")


def spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    fmt = f"{{:.{digits}f}}"
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def digits_for(values: list[float]) -> int:
    top = max(abs(v) for v in values) if values else 0
    return 0 if top >= 100 else 1 if top >= 10 else 2 if top >= 1 else 3


def table(results: Results) -> str:
    lines = [
        "| section | measurement | unit | median [min-max] | ratio, same round | load average | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results.rows.values():
        ratios = ", ".join(f"{spread(v, 2)}x {name}" for name, v in row.ratios.items())
        lines.append(
            f"| {row.section} | {row.name} | {row.unit} | {spread(row.values, digits_for(row.values))} | {ratios or '-'} "
            f"| {spread(row.loads, 1)} | {row.note} |"
        )
    return "\n".join(lines)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- inbound SMTP ---------------------------------------------------------------------------------


def chosen_sizes(args) -> list[tuple[str, int]]:
    return [(name, size) for name, size in SIZES.items() if not args.sizes or name.split()[0] in args.sizes.split(",")]


def chosen_sessions(args) -> list[int]:
    return [n for n in SESSIONS if not args.sessions or str(n) in args.sessions.split(",")]


def smtp_labels(args) -> list[str]:
    return [f"{s}, {n} session{'s' if n > 1 else ''}" for s, _ in chosen_sizes(args) for n in chosen_sessions(args)]


class Mailcore:
    """The MX as `make run` starts it (`runmail`: every listener, the web UI and qcluster, on one
    database and broker), or with --shape runsmtp the MX listener alone, on a fresh database."""

    def __init__(self, shape: str, database, workdir: Path, **extra_env: str):
        self.shape, self.database, self.workdir = shape, database, workdir
        self.extra_env = extra_env
        self.port = project.free_port()
        self.process: Process | None = None

    def start(self) -> None:
        env = dict(self.database.create(), **self.extra_env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.shape == "runsmtp":
            self.process = Process.manage(["runsmtp", "--bind", f"{HOST}:{self.port}"], env, self.workdir / "runsmtp.log")
            self.others: list[int] = []
            return
        self.others = [project.free_port() for _ in range(3)]
        env.update(
            MAIL_SMTP_BIND=f"{HOST}:{self.port}",
            MAIL_SUBMISSION_BIND=f"{HOST}:{self.others[0]}",
            MAIL_POP3_BIND=f"{HOST}:{self.others[1]}",
            MAIL_WEB_BIND=f"{HOST}:{self.others[2]}",
        )
        self.process = Process.manage(["runmail"], env, self.workdir / "runmail.log")

    def wait_settled(self) -> None:
        """Until every role listens and qcluster has made its first scheduler pass.

        A server runs for days; its first minute is not what a user sees. qcluster's scheduler
        first wakes 30 s after the cluster starts and runs every schedule that is due at once
        (on a fresh database, all of them); a measurement taken before would also measure the
        start-up of the roles and that pass.
        """
        for port in (self.port, *self.others):
            project.wait_for_port(HOST, port, self.process.proc, timeout=120)
        if self.shape == "runsmtp":
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.database.scalar(project.TASKS_DONE) == 0:
            if time.monotonic() > deadline or self.process.proc.poll() is not None:
                raise RuntimeError(f"qcluster ran no scheduled task within {SETTLE_SECONDS} s (see {self.workdir})")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.database.drop()


# How long a started `runmail` may take to listen everywhere and make its first scheduler pass.
SETTLE_SECONDS = 120

# What the inbound SMTP round's DNS server answers: smtp-source's sender domain publishes SPF
# (the loopback client passes) and DMARC, so each message costs the SPF, DMARC and ARC lookups
# and evaluation (smtp-source's messages carry no DKIM signature).
AUTH_RECORDS = {
    "example.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test"]},
}

MAILCORE, UNCHECKED, POSTFIX, BARE = "mailcore", "mailcore, checks off", "postfix", "aiosmtpd bare"


def chosen_databases(args) -> list[str]:
    chosen = args.database.split(",")
    if "postgres" in chosen and not project.PostgresCopy.available():
        log("PostgreSQL on 127.0.0.1:5432 is not reachable: the SMTP section runs on SQLite only")
        chosen.remove("postgres")
    return chosen


def bench_smtp(args, workdir: Path, template: project.Template, results: Results) -> None:
    from tests.dnsserver import TestDNSServer

    with TestDNSServer(AUTH_RECORDS) as dns:
        for database in chosen_databases(args):
            for round_no in range(args.rounds):
                smtp_round(args, workdir, template, results, database, round_no, dns.address)


def smtp_round(args, workdir: Path, template, results: Results, database: str, round_no: int, dns_address: str) -> None:
    """mailcore with the authentication checks on (DNS answered locally) and off, and Postfix,
    measured one after another for each size and session count, in an order that alternates
    between rounds (ours, Postfix, ours; then the other way round)."""
    recipient = f"{SMTP_USER}@{DOMAIN}"

    def copy(label: str):
        if database == "postgres":
            return project.PostgresCopy(workdir, f"smtp{round_no}{label}", args.redis_url)
        return project.SqliteCopy(workdir, template, f"smtp{round_no}{label}")

    checked = Mailcore(args.shape, copy("c"), workdir / "checked", MAIL_DNS_SERVERS=dns_address)
    unchecked = Mailcore(args.shape, copy("u"), workdir / "unchecked", MAIL_AUTH_CHECKS="0")
    section = f"inbound SMTP, {checked.database.label}"
    log(f"{section}, round {round_no + 1} of {args.rounds}")
    servers: dict[str, int] = {}
    bare = postfix = None
    try:
        for server in (checked, unchecked):
            server.start()
        for server in (checked, unchecked):
            server.wait_settled()
        servers[MAILCORE] = checked.port
        if args.postfix:
            postfix = peers.Postfix(workdir, HOST, project.free_port(), DOMAIN, SMTP_USER)
            postfix.clear_maildir()
            postfix.start()
            project.wait_for_port(HOST, postfix.port)
            servers[POSTFIX] = postfix.port
        servers[UNCHECKED] = unchecked.port
        if args.bare:
            bare_port = project.free_port()
            bare = Process([sys.executable, str(Path(__file__).with_name("bare_smtp.py")), HOST, str(bare_port)],
                           os.environ.copy(), workdir / "bare.log")
            project.wait_for_port(HOST, bare_port, bare.proc)
            servers[BARE] = bare_port
        order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
        # The CPU each server's whole process tree spends: on a machine shared with other work the
        # rates depend on the share of the CPUs a server gets, its CPU per message does not.
        pids = {MAILCORE: lambda: checked.process.pid, UNCHECKED: lambda: unchecked.process.pid}
        if postfix is not None:
            pids[POSTFIX] = postfix.master_pid
        if bare is not None:
            pids[BARE] = lambda: bare.pid
        # Each server's first connections pay for what a running one no longer does (its
        # worker processes or threads, database connections, caches): warm every one up
        # alike, so that the first measurement of a round is not also a start-up's.
        for name in order:
            clients.smtp_source(HOST, servers[name], sessions=1, messages=WARM_UP, size=1024,
                                sender="sender@example.test", recipient=recipient)
        expected = WARM_UP
        for size_name, size in chosen_sizes(args):
            for sessions in chosen_sessions(args):
                count = messages_for(sessions, args.scale)
                rates, cpu = {}, {}
                for name in order:
                    wait_for_delivery(postfix, expected)
                    cpu_before = clients.cpu_seconds(pids[name]())
                    result = clients.smtp_source(
                        HOST, servers[name], sessions=sessions, messages=count, size=size,
                        sender="sender@example.test", recipient=recipient,
                    )
                    rates[name] = result.rate
                    if name == POSTFIX:
                        wait_for_delivery(postfix, expected + count)  # its delivery is part of its cost
                    cpu[name] = (clients.cpu_seconds(pids[name]()) - cpu_before) * 1000 / count
                expected += count
                load = os.getloadavg()[0]
                label = f"{size_name}, {sessions} session{'s' if sessions > 1 else ''}"
                for name in servers:
                    results.add(section, f"{label}: {name}", "messages/s", rates[name], load)
                    results.add(section, f"{label}: {name}, CPU", "ms per message", cpu[name], load)
                for name in (MAILCORE, UNCHECKED):
                    if POSTFIX in cpu:
                        results.ratio(section, f"{label}: {name}, CPU", POSTFIX, cpu[name], cpu[POSTFIX])
                for name in (MAILCORE, UNCHECKED):
                    for baseline in (POSTFIX, BARE):
                        if baseline in rates:
                            results.ratio(section, f"{label}: {name}", baseline, rates[name], rates[baseline])
                # The cost of SPF, DKIM, DMARC and ARC: the same server with them off, same round.
                results.ratio(section, f"{label}: {MAILCORE}", "checks off", rates[MAILCORE], rates[UNCHECKED])
                for server, name in ((checked, MAILCORE), (unchecked, UNCHECKED)):
                    stored = server.database.count_inbox(recipient)
                    if stored != expected:
                        results.note(section, f"{label}: {name}", f"MISSING: {stored} of {expected} in mailbox")
                        log(f"  {label}: {name}: {stored} of {expected} accepted messages in the mailbox")
                log(f"  {label} (load {load:.1f}): " + ", ".join(f"{n} {rates[n]:.0f}/s ({cpu[n]:.1f} ms CPU)" for n in order))
        if postfix is not None:
            wait_for_delivery(postfix, expected)
            delivered = postfix.delivered()
            for label in smtp_labels(args):
                results.note(section, f"{label}: {POSTFIX}",
                             "all in Maildir" if delivered == expected else f"{delivered} of {expected} in Maildir")
        for server, name in ((checked, MAILCORE), (unchecked, UNCHECKED)):
            if server.database.count_inbox(recipient) == expected:
                for label in smtp_labels(args):
                    results.note(section, f"{label}: {name}", "all in mailbox (counted)")
    finally:
        for server in (checked, unchecked):
            server.stop()
        if bare is not None:
            bare.stop()
        if postfix is not None:
            postfix.stop()


# --- POP3 --------------------------------------------------------------------------------------------


def bench_pop3(args, workdir: Path, template: project.Template, results: Results) -> None:
    dovecot = None
    if args.peers:
        vmail = workdir / "vmail-pop3"
        shutil.rmtree(vmail, ignore_errors=True)
        body = project.message_bytes(args.retr_size)
        peers.write_maildir(vmail, DOMAIN, RETR_USER, [
            body.replace(b"Message-ID: <0@bench.test>", f"Message-ID: <{i}@bench.test>".encode()) for i in range(args.retr_count)
        ])
        for user in LOGIN_USERS:
            peers.write_maildir(vmail, DOMAIN, user, [])
        users = {f"{u}@{DOMAIN}": PASSWORD for u in [RETR_USER, *LOGIN_USERS]}
        dovecot = peers.Dovecot(workdir, HOST, project.free_port(), vmail, users)
        dovecot.start()
        project.wait_for_port(HOST, dovecot.port)
    logins = [f"{u}@{DOMAIN}" for u in LOGIN_USERS]
    try:
        for round_no in range(args.rounds):
            log(f"POP3, round {round_no + 1} of {args.rounds}")
            db, data_dir = template.fresh("pop3")
            port = project.free_port()
            env = project.base_env(workdir, db, data_dir)
            server = Process.manage(["runpop3", "--bind", f"{HOST}:{port}"], env, workdir / "runpop3.log")
            try:
                project.wait_for_port(HOST, port, server.proc)
                targets = {"mailcore": port}
                if dovecot is not None:
                    targets["dovecot"] = dovecot.port
                retr, login = {}, {}
                for name, target in targets.items():
                    retr[name] = clients.pop3_retrieve_all(HOST, target, f"{RETR_USER}@{DOMAIN}", PASSWORD)
                    login[name] = clients.pop3_logins(HOST, target, logins, PASSWORD, args.login_seconds)
                for name in targets:
                    results.add("POP3", f"RETR {args.retr_count} x {args.retr_size // 1024} KB: {name}", "messages/s", retr[name].rate)
                    results.add("POP3", f"RETR throughput: {name}", "MB/s", retr[name].octets / retr[name].seconds / 1e6)
                    results.add("POP3", f"logins, 20 clients: {name}", "logins/s", login[name].rate)
                if dovecot is not None:
                    results.ratio("POP3", f"RETR {args.retr_count} x {args.retr_size // 1024} KB: mailcore", "dovecot",
                                  retr["mailcore"].rate, retr["dovecot"].rate)
                    results.ratio("POP3", "logins, 20 clients: mailcore", "dovecot", login["mailcore"].rate, login["dovecot"].rate)
                log("  " + ", ".join(f"{n}: RETR {retr[n].rate:.0f}/s, logins {login[n].rate:.1f}/s" for n in targets))
                for name in targets:
                    if retr[name].count != args.retr_count:
                        results.note("POP3", f"RETR {args.retr_count} x {args.retr_size // 1024} KB: {name}",
                                     f"STAT said {retr[name].count}")
            finally:
                server.stop()
                project.remove_copy(db, data_dir)
    finally:
        if dovecot is not None:
            results.note("POP3", "logins, 20 clients: dovecot", "SHA512-CRYPT passwd-file, auth cache on")
            dovecot.stop()


# --- reverse delivery: SOURCE's 250 to the mailbox ---------------------------------------------------

SOURCE_ON_A = """
import json, sys
from datetime import timedelta
from django.conf import settings
from django.utils import timezone
from mailcore.models import Message, SourcedMessage
from mailcore.store import message_store
from mailcore.reverse_delivery.ids import new_source_id
spec = json.loads(sys.stdin.read())
ids = []
for i in range(spec["count"]):
    body = message_store().put(spec["content"].encode())
    message = Message.objects.create(body_ref=body.ref, size=body.size, sha256=body.sha256,
        mail_from="alice@a.test", rcpt_tos=["bob@b.test"], transport="submission", verification="verified")
    sourced = SourcedMessage.objects.create(source_id=new_source_id(), message=message, mail_from="alice@a.test",
        rcpt_tos=["bob@b.test"], destination_host="mx.b.test",
        expires_at=timezone.now() + timedelta(seconds=settings.MAIL_SOURCE_RETENTION))
    ids.append(sourced.source_id)
print(json.dumps(ids))
"""

ADD_ACCOUNT = """
import sys
from mailcore.services import accounts
domain, address = sys.stdin.read().split()
accounts.add_domain(domain)
accounts.add_mailbox(address, "instance-password-1")
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def announce(port: int, source_id: str) -> float:
    """SOURCE to B as A's outbound client would; the time of the 250."""
    # From a.test's MX address, as A's own client would: an origin's own ids are pulled at once
    # (reverse-delivery.md §6, Fair pulls), where a stranger's are paced.
    with smtplib.SMTP("127.0.0.3", port, local_hostname="mx.a.test", timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("mx.a.test")
        client.mail("alice@a.test")
        client.rcpt("bob@b.test")
        code, text = client.docmd("SOURCE", source_id)
        acknowledged = time.perf_counter()
    if code != 250:
        raise RuntimeError(f"SOURCE answered {code} {text!r}")
    return acknowledged


class InstancePair:
    """Two fresh instances: A's MX answers GET for what A sourced; B's MX takes SOURCE, B's cluster pulls."""

    def __init__(self, workdir: Path, template, dns_address: str, redis_url: str | None, label: str, **extra_env: str):
        self.workdir, self.template, self.dns_address = workdir, template, dns_address
        self.redis_url, self.label, self.extra_env = redis_url, label, extra_env
        self.procs: list[Process] = []
        self.copies: list[tuple[Path, Path]] = []
        self.envs: dict[str, dict[str, str]] = {}
        self.port = project.free_port("127.0.0.2")

    def __enter__(self) -> InstancePair:
        try:
            for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
                db, data_dir = self.template.fresh(f"source-{name}")
                self.copies.append((db, data_dir))
                extra = dict(
                    MAIL_HOSTNAME=f"mx.{name}.test", MAIL_DNS_SERVERS=self.dns_address,
                    MAIL_REMOTE_SMTP_PORT=str(self.port), MAIL_ALLOW_PRIVATE_DESTINATIONS="1",
                    MAIL_Q_NAME=f"bench-{name}-{self.label}", MAIL_LOG_LEVEL="WARNING", **self.extra_env,
                )
                if self.redis_url:
                    extra["REDIS_URL"] = self.redis_url
                env = self.envs[name] = project.base_env(self.workdir, db, data_dir, **extra)
                user = "alice" if name == "a" else "bob"
                project.manage(["shell", "-c", ADD_ACCOUNT], env, stdin=f"{name}.test {user}@{name}.test")
                proc = Process.manage(["runsmtp", "--bind", f"{address}:{self.port}"], env, self.workdir / f"source-{name}-smtp.log")
                self.procs.append(proc)
                project.wait_for_port(address, self.port, proc.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_cluster(self) -> None:
        self.procs.append(Process.manage(["qcluster"], self.envs["b"], self.workdir / "source-b-qcluster.log"))

    def source_on_a(self, count: int, content: str) -> list[str]:
        spec = json.dumps({"count": count, "content": content})
        return json.loads(project.manage(["shell", "-c", SOURCE_ON_A], self.envs["a"], stdin=spec).splitlines()[-1])

    @property
    def b_db(self) -> Path:
        return self.copies[1][0]

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.stop()
        for db, data_dir in self.copies:
            project.remove_copy(db, data_dir)


def source_round(args, workdir: Path, template, dns_address: str, redis_url: str | None, label: str, content: str) -> list[float]:
    """Seconds from each SOURCE's 250 to the Delivery row on B, one message after another."""
    with InstancePair(workdir, template, dns_address, redis_url, label) as pair:
        pair.start_cluster()
        ids = pair.source_on_a(args.source_count, content)
        time.sleep(2)  # the cluster's workers are up
        timings = []
        with sqlite3.connect(pair.b_db, timeout=30) as reader:
            for source_id in ids:
                acknowledged = announce(pair.port, source_id)
                while not reader.execute(
                    "SELECT 1 FROM mailcore_delivery d JOIN mailcore_announcement n ON n.message_id = d.message_id"
                    " WHERE n.source_id = ?", (source_id,),
                ).fetchone():
                    if time.perf_counter() > acknowledged + 60:
                        raise RuntimeError(f"{source_id} not delivered on B after 60 s")
                    time.sleep(0.002)
                timings.append(time.perf_counter() - acknowledged)
        return timings


def verify_round(args, workdir: Path, template, dns_address: str, redis_url: str | None, label: str, content: str) -> float:
    """Announcements verified per second on B when `--pending` of them from one origin wait at once.

    All are announced before B's cluster starts, so they are all pending when the pulls begin;
    the rate is taken from the first verified to the last.
    """
    limits = {"MAIL_SOURCE_MAX_PENDING_PER_CLIENT": str(args.pending * 2), "MAIL_SOURCE_MAX_PENDING_PER_DOMAIN": str(args.pending * 2)}
    with InstancePair(workdir, template, dns_address, redis_url, label, **limits) as pair:
        ids = pair.source_on_a(args.pending, content)
        with smtplib.SMTP("127.0.0.3", pair.port, local_hostname="mx.a.test", timeout=30, source_address=("127.0.0.2", 0)) as client:
            client.ehlo("mx.a.test")
            for source_id in ids:
                client.mail("alice@a.test")
                client.rcpt("bob@b.test")
                code, text = client.docmd("SOURCE", source_id)
                if code != 250:
                    raise RuntimeError(f"SOURCE answered {code} {text!r}")
        pair.start_cluster()
        first = None
        deadline = time.perf_counter() + 300
        with sqlite3.connect(pair.b_db, timeout=30) as reader:
            while True:
                (done,) = reader.execute("SELECT COUNT(*) FROM mailcore_announcement WHERE state = 'verified'").fetchone()
                now = time.perf_counter()
                if done and first is None:
                    first = (now, done)
                if done >= args.pending:
                    break
                if now > deadline:
                    raise RuntimeError(f"{done} of {args.pending} verified after 300 s")
                time.sleep(0.05)
        return (done - first[1]) / (now - first[0]) if now > first[0] else 0.0


def bench_source(args, workdir: Path, template: project.Template, results: Results) -> None:
    from tests.dnsserver import TestDNSServer

    redis = None
    brokers = ["ORM"]
    if shutil.which("redis-server"):
        redis_port = project.free_port()
        redis = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        project.wait_for_port(HOST, redis_port, redis)
        brokers.append("Redis")
    records = {
        "a.test": {"MX": [(10, "mx.a.test")]}, "mx.a.test": {"A": ["127.0.0.2"]},
        "b.test": {"MX": [(10, "mx.b.test")]}, "mx.b.test": {"A": ["127.0.0.3"]},
    }
    # From: aligned with the envelope's a.test, so that a pulled message is verified (spec §5).
    content = project.message_bytes(2048).decode().replace("sender@example.test", "alice@a.test")
    try:
        with TestDNSServer(records) as dns:
            for broker in brokers:
                for round_no in range(args.rounds):
                    log(f"SOURCE to mailbox, {broker} broker, round {round_no + 1} of {args.rounds}")
                    redis_url = f"redis://{HOST}:{redis_port}/0" if broker == "Redis" else None
                    timings = source_round(args, workdir, template, dns.address, redis_url, f"{round_no}-{broker.lower()}", content)
                    results.add("SOURCE to mailbox", f"median, {broker} broker", "s", statistics.median(timings))
                    results.add("SOURCE to mailbox", f"p99, {broker} broker", "s", _percentile(timings, 0.99))
                    log(f"  median {statistics.median(timings) * 1000:.0f} ms, p99 {_percentile(timings, 0.99) * 1000:.0f} ms")
                results.note("SOURCE to mailbox", f"median, {broker} broker", f"{args.source_count} messages one after another, 2 KB")
            for broker in brokers if args.pending else []:
                for round_no in range(args.rounds):
                    log(f"{args.pending} pending announcements, {broker} broker, round {round_no + 1} of {args.rounds}")
                    redis_url = f"redis://{HOST}:{redis_port}/0" if broker == "Redis" else None
                    rate = verify_round(args, workdir, template, dns.address, redis_url, f"v{round_no}-{broker.lower()}", content)
                    results.add("SOURCE to mailbox", f"verified/s, {args.pending} pending, {broker} broker", "messages/s", rate)
                    log(f"  {rate:.0f} verified/s")
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait()


# --- idle connections --------------------------------------------------------------------------------


class MemoryTarget:
    """A server started afresh for each measurement: a warmed-up process would reuse freed memory
    (Python's allocator) or idle worker processes (Postfix, Dovecot) and hide the cost."""

    def __init__(self, name: str, start, stop):
        self.name, self._start, self._stop = name, start, stop

    def __enter__(self) -> tuple[int, int]:
        return self._start()

    def __exit__(self, *exc) -> None:
        self._stop()


def memory_targets(args, workdir: Path, template: project.Template) -> list[MemoryTarget]:
    targets = []

    def manage_target(name: str, command: str) -> MemoryTarget:
        state = {}

        def start():
            db, data_dir = template.fresh("memory")
            port = project.free_port()
            proc = Process.manage([command, "--bind", f"{HOST}:{port}"], project.base_env(workdir, db, data_dir),
                                  workdir / f"memory-{command}.log")
            state.update(proc=proc, copy=(db, data_dir))
            project.wait_for_port(HOST, port, proc.proc)
            return port, proc.pid

        def stop():
            state["proc"].stop()
            project.remove_copy(*state["copy"])

        return MemoryTarget(name, start, stop)

    targets.append(manage_target("mailcore SMTP", "runsmtp"))
    targets.append(manage_target("mailcore POP3", "runpop3"))
    bare_state = {}

    def bare_start():
        port = project.free_port()
        proc = Process([sys.executable, str(Path(__file__).with_name("bare_smtp.py")), HOST, str(port)], os.environ.copy(),
                       workdir / "memory-bare.log")
        bare_state["proc"] = proc
        project.wait_for_port(HOST, port, proc.proc)
        return port, proc.pid

    targets.append(MemoryTarget("aiosmtpd bare", bare_start, lambda: bare_state["proc"].stop()))
    if args.peers:
        limit = args.idle + 100
        postfix = peers.Postfix(workdir / "memory", HOST, project.free_port(), DOMAIN, SMTP_USER, process_limit=limit)
        vmail = workdir / "memory" / "vmail-empty"
        dovecot = peers.Dovecot(workdir / "memory", HOST, project.free_port(), vmail, {f"{RETR_USER}@{DOMAIN}": PASSWORD},
                                process_limit=limit)

        def postfix_start():
            postfix.start()
            project.wait_for_port(HOST, postfix.port)
            return postfix.port, postfix.master_pid()

        def dovecot_start():
            peers.write_maildir(vmail, DOMAIN, RETR_USER, [])
            dovecot.start()
            project.wait_for_port(HOST, dovecot.port)
            return dovecot.port, dovecot.master_pid()

        targets.append(MemoryTarget("postfix SMTP", postfix_start, postfix.stop))
        targets.append(MemoryTarget("dovecot POP3", dovecot_start, dovecot.stop))
    return targets


def bench_memory(args, workdir: Path, template: project.Template, results: Results) -> None:
    targets = memory_targets(args, workdir, template)
    for round_no in range(args.rounds):
        log(f"idle connections, round {round_no + 1} of {args.rounds}")
        for target in targets:
            with target as (port, pid):
                if pid is None:
                    raise RuntimeError(f"{target.name}: no process id")
                opened, before, during = clients.hold_idle(HOST, port, args.idle, pid)
                results.add("idle connections", f"{args.idle} idle: {target.name}", "KiB PSS each", (during - before) / opened)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.many + 200:
        log(f"fd limit {soft}: not trying {args.many} connections")
        return
    for target in targets[:2]:
        log(f"holding {args.many} idle connections to {target.name}")
        with target as (port, pid):
            try:
                opened, before, during = clients.hold_idle(HOST, port, args.many, pid, settle=2.0)
                results.add("idle connections", f"{args.many} held at once: {target.name}", "connections", opened)
                results.add("idle connections", f"{args.many} idle: {target.name}", "KiB PSS each", (during - before) / opened)
            except RuntimeError as error:
                results.add("idle connections", f"{args.many} held at once: {target.name}", "connections", 0)
                results.note("idle connections", f"{args.many} held at once: {target.name}", str(error)[:120])


# --- pulling a large body (reverse-delivery.md §6, "Bounded pulls") ----------------------------------


def bench_pull(args, workdir: Path, template: project.Template, results: Results) -> None:
    pull_body.bench_pull(args.rounds, log, results)


# Two nodes' load: 8 sessions of 10 KB messages, as in docs/scaling.md.
NODES_MESSAGES, NODES_SESSIONS, NODES_SIZE = 600, 8, 10 * 1024


def bench_nodes(args, workdir: Path, template: project.Template, results: Results) -> None:
    """Two listener nodes of one domain against one (bench/two_nodes.py): PostgreSQL, Redis, S3."""
    if not project.PostgresCopy.available() or shutil.which("redis-server") is None:
        log("two nodes: PostgreSQL on 127.0.0.1:5432 or redis-server is missing: section left out")
        return
    section = "two nodes, PostgreSQL + Redis + S3 (moto)"
    messages = int(NODES_MESSAGES * args.scale)
    label = f"{NODES_SIZE // 1024} KB, {NODES_SESSIONS} sessions"
    measured = two_nodes.measure(args.rounds, messages, NODES_SESSIONS, NODES_SIZE, workdir / "nodes", log)
    for one, two, load in zip(measured["one"], measured["two"], measured["load"], strict=True):
        results.add(section, f"{label}: one node", "messages/s", one, load)
        results.add(section, f"{label}: two nodes", "messages/s", two, load)
        results.ratio(section, f"{label}: two nodes", "one node", two, one)
    results.note(section, f"{label}: two nodes", "all in mailbox (counted); the same sessions split over both")


# --- main --------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, Python {platform.python_version()}"


def versions() -> str:
    found = []
    for argv in (["postconf", "-d", "-h", "mail_version"], ["dovecot", "--version"]):
        try:
            found.append(f"{argv[0]} {subprocess.run(argv, capture_output=True, text=True).stdout.split()[0]}")
        except (OSError, IndexError):
            pass
    import aiosmtpd

    found.append(f"aiosmtpd {aiosmtpd.__version__}")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also measure Postfix and Dovecot (installed from Debian)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", default="sqlite,postgres",
                        help="SMTP: sqlite (the ORM broker), postgres (127.0.0.1:5432, with Redis), or both (default)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10", help="the Redis of --database postgres")
    parser.add_argument("--no-postfix", dest="postfix", action="store_false",
                        help="SMTP: do not run Postfix beside (it needs root and Debian's postfix package)")
    parser.add_argument("--bare", action="store_true", help="SMTP: also measure a bare aiosmtpd that stores nothing")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: SMTP only, SQLite, 10 KB from 10 sessions, one round of a quarter of the messages")
    parser.add_argument("--shape", choices=("runmail", "runsmtp"), default="runmail",
                        help="SMTP: the MX as `make run` starts it (with qcluster and the other roles), or alone")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the SMTP message counts")
    parser.add_argument("--only", default="smtp,pop3,source,pull,memory,nodes", help="comma-separated sections")
    parser.add_argument("--sizes", default="", help="SMTP message sizes to run, e.g. 1,10 (KB; default all)")
    parser.add_argument("--sessions", default="", help="SMTP session counts to run, e.g. 1,10 (default all)")
    parser.add_argument("--retr-count", type=int, default=5000)
    parser.add_argument("--retr-size", type=int, default=10 * 1024)
    parser.add_argument("--login-seconds", type=float, default=3.0)
    parser.add_argument("--source-count", type=int, default=100)
    parser.add_argument("--pending", type=int, default=None,
                        help="announcements pending at once (0: skip; default 1000 with --peers, else 0)")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--many", type=int, default=10000)
    parser.add_argument("--workdir", default=str(project.ROOT / "var" / "bench"))
    args = parser.parse_args()
    if args.quick:
        args.only, args.database, args.sizes, args.sessions, args.rounds = "smtp", "sqlite", "10", "10", 1
        args.scale = min(args.scale, 0.25)
    if args.postfix and (os.geteuid() != 0 or not shutil.which("postfix")):
        log("Postfix is not run beside (it needs root and Debian's postfix package): no ratios against it")
        args.postfix = False
    if args.pending is None:
        args.pending = 1000 if args.peers else 0  # about three minutes: only in the long run

    # 10,000 idle connections need more descriptors than the usual 1,024, here and in the servers.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)
    sections = set(args.only.split(","))
    log(f"building the template database in {workdir}")
    template = project.Template(workdir, args.retr_count if "pop3" in sections else 0, args.retr_size)
    template.build()
    results = Results()
    started = datetime.now(UTC)
    try:
        for section, run in (
            ("smtp", bench_smtp), ("pop3", bench_pop3), ("source", bench_source), ("pull", bench_pull), ("memory", bench_memory),
            ("nodes", bench_nodes),
        ):
            if section in sections:
                run(args, workdir, template, results)
    finally:
        # Whatever was measured is kept, also when a later section fails.
        report = (
            f"Machine: {machine()}\nDate: {started:%Y-%m-%d %H:%M} UTC\nPeers: {versions()}\n"
            f"Rounds: {args.rounds}; figures are median [min-max] over rounds; ratios are per round.\n\n{table(results)}\n"
        )
        print("\n" + report)
        (workdir.parent / "bench-results.md").write_text(report)
        (workdir.parent / "bench-results.json").write_text(json.dumps(
            {f"{r.section}: {r.name}": {"unit": r.unit, "values": r.values, "ratios": r.ratios, "loads": r.loads, "note": r.note}
             for r in results.rows.values()}, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda hook_args: None  # dnslib's server threads on shutdown
    sys.exit(main())

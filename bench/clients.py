"""The benchmark's clients: smtp-source for SMTP, a small asyncio POP3 client, idle connections, memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass

SMTP_SOURCE = "/usr/sbin/smtp-source"


@dataclass
class Throughput:
    count: int
    seconds: float
    octets: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def smtp_source(host: str, port: int, *, sessions: int, messages: int, size: int, sender: str, recipient: str) -> Throughput:
    """Postfix's smtp-source: `messages` messages of `size` octets over `sessions` parallel sessions.

    smtp-source stops at the first reply that is not the expected positive one (no -A), so an
    exit status of 0 means every message was accepted with 250.
    """
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, "-M", "client.bench.test", f"{host}:{port}"]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"smtp-source failed against {host}:{port}: {result.stderr.strip()[-500:]}")
    return Throughput(messages, elapsed, messages * size)


# --- POP3 (RFC 1939) -------------------------------------------------------------------------


class POP3Error(Exception):
    pass


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\r\n")
    if not line.startswith(b"+OK"):
        raise POP3Error(line.decode(errors="replace").strip())
    return line


async def _login(host: str, port: int, user: str, password: str):
    reader, writer = await asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
    await _line(reader)
    writer.write(f"USER {user}\r\n".encode())
    await _line(reader)
    writer.write(f"PASS {password}\r\n".encode())
    await _line(reader)
    return reader, writer


async def _quit(reader, writer) -> None:
    writer.write(b"QUIT\r\n")
    await _line(reader)
    writer.close()
    await writer.wait_closed()


async def _retrieve_all(host: str, port: int, user: str, password: str) -> Throughput:
    reader, writer = await _login(host, port, user, password)
    writer.write(b"STAT\r\n")
    count = int((await _line(reader)).split()[1])
    octets = 0
    started = time.perf_counter()
    # One RETR at a time, as fetchmail and most mail clients do without PIPELINING.
    for number in range(1, count + 1):
        writer.write(b"RETR %d\r\n" % number)
        await _line(reader)
        octets += len(await reader.readuntil(b"\r\n.\r\n"))
    elapsed = time.perf_counter() - started
    await _quit(reader, writer)
    return Throughput(count, elapsed, octets)


def pop3_retrieve_all(host: str, port: int, user: str, password: str) -> Throughput:
    return asyncio.run(_retrieve_all(host, port, user, password))


async def _logins(host: str, port: int, users: list[str], password: str, seconds: float) -> Throughput:
    done = 0
    failures: list[str] = []

    async def client(user: str) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            try:
                reader, writer = await _login(host, port, user, password)
                await _quit(reader, writer)
                done += 1
            except (POP3Error, OSError, asyncio.IncompleteReadError) as error:
                failures.append(f"{user}: {error}")
                await asyncio.sleep(0.01)

    # One untimed login per user first: polling clients log in again and again, so what is measured
    # is the steady state, with each server's cache of verified credentials warm (Dovecot's too).
    async def warm(user: str) -> None:
        reader, writer = await _login(host, port, user, password)
        await _quit(reader, writer)

    await asyncio.gather(*(warm(user) for user in users))
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client(user) for user in users))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} failed logins, first: {failures[0]}")
    return Throughput(done, elapsed)


def pop3_logins(host: str, port: int, users: list[str], password: str, seconds: float) -> Throughput:
    """Each user in its own client, logging in and out again and again for `seconds`."""
    return asyncio.run(_logins(host, port, users, password, seconds))


# --- idle connections and their memory --------------------------------------------------------


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(root_pid: int) -> float:
    """CPU time (user and system) of a process and all its descendants, those that exited and
    were waited for included (their parent's cutime and cstime)."""
    ticks = 0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_kib(root_pid: int) -> int:
    """Proportional set size of a process and all its descendants (shared pages counted once)."""
    total = 0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


async def _hold_idle(host: str, port: int, count: int, root_pid: int, settle: float) -> tuple[int, int, int]:
    """Open `count` connections, read each greeting; (opened, PSS before, PSS while held) in KiB."""
    before = pss_kib(root_pid)
    connections = []
    sem = asyncio.Semaphore(200)  # the listen backlog is finite: open them in waves

    async def open_one():
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
            greeting = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
            if greeting[:1] not in (b"2", b"+"):
                raise RuntimeError(f"refused: {greeting!r}")
            connections.append(writer)

    results = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    await asyncio.sleep(settle)
    during = pss_kib(root_pid)
    for writer in connections:
        writer.close()
    await asyncio.sleep(0.5)
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} connections failed, first: {errors[0]!r}")
    return len(connections), before, during


def hold_idle(host: str, port: int, count: int, root_pid: int, settle: float = 1.0) -> tuple[int, int, int]:
    return asyncio.run(_hold_idle(host, port, count, root_pid, settle))

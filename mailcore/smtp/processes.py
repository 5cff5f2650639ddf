"""Several listener processes on one set of sockets, as Postfix's master(8) runs its smtpd(8)s.

One Python process serves its sessions on one core: the event loop and the worker threads
share the GIL. `runsmtp --processes N` binds the sockets once, then forks N processes that
accept on them (the kernel hands each connection to one of them) and supervises them: a process
that dies is started again, SIGTERM and SIGINT are passed on so that each stops gracefully, and
the supervisor exits when all have. Process 0 always accepts; the others only while the
processes together are busy (listener.Spillover). The processes share nothing but the database, the body
store, the cache, and the connection counts (listener.SharedCounts); on SQLite, their group
commits take the single writer's turn by flock(2) (groupcommit.WriterTurn).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from django.db import connections

from mailcore.smtp.listener import LISTEN_BACKLOG, SharedCounts, shown_address

log = logging.getLogger("mailcore.smtp")

PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

# A process that dies this soon after it started, this many times in a row, is not restarted:
# something is wrong with the configuration or the database, not with one session.
QUICK_DEATH_SECONDS = 5.0
QUICK_DEATHS_ALLOWED = 3

# Process k >= 1 accepts connections only while k x this many sessions are open in all the
# processes together (listener.Spillover): a light load stays in process 0, which serves it
# more cheaply than several processes all woken by each connection.
SPILLOVER_SESSIONS = 4


def bind_sockets(name: str, binds: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets for every address of every bind, as loop.create_server would make them."""
    sockets: list[socket.socket] = []
    try:
        for host, port in binds:
            seen = set()
            for family, kind, proto, _name, address in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            log.info("%s listening on %s", name, shown_address(host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """Fork `count` processes that each run `serve(index)`, keep them running, stop them together."""

    def __init__(
        self, name: str, count: int, sockets: list[socket.socket], counts: SharedCounts, serve: Callable[[int], None]
    ):
        self.name = name
        self.sockets = sockets
        self.count = count
        self.counts = counts
        self.serve = serve
        self.children: dict[int, int] = {}  # pid -> process index
        self.started: dict[int, float] = {}  # process index -> when it was last started
        self.quick_deaths = 0
        self.stopping = False

    def run(self) -> int:
        """Returns the exit status: 0 after a requested stop, 1 when the processes kept dying."""
        connections.close_all()  # no database connection may be shared across the fork
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop)
        for index in range(self.count):
            self._start(index)
        status = 0
        while self.children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait itself
                continue
            index = self.children.pop(pid, None)
            if index is None:
                continue
            self.counts.clear(index)
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            log.error("%s: process %d (pid %d) exited with status %d; starting it again", self.name, index, pid, code)
            if time.monotonic() - self.started[index] < QUICK_DEATH_SECONDS:
                self.quick_deaths += 1
                if self.quick_deaths >= QUICK_DEATHS_ALLOWED:
                    log.error("%s: processes keep dying at start; stopping", self.name)
                    self._stop(signal.SIGTERM, None)
                    status = 1
                    continue
            else:
                self.quick_deaths = 0
            self._start(index)
        return status

    def _start(self, index: int) -> None:
        if self.stopping:
            return
        parent = os.getpid()
        # No stop signal may run the supervisor's handler in a child that has not yet got its
        # own: it would close the sockets and signal the siblings. Blocked across the fork.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid:
            self.children[pid] = index
            self.started[index] = time.monotonic()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            return
        # The child: die with the supervisor (even by SIGKILL), never outlive it on the sockets.
        code = 1
        try:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _die_with_parent()
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os._exit(1)
            self.counts.process = index
            log.info("%s: process %d started (pid %d)", self.name, index, os.getpid())
            self.serve(index)
            code = 0
        except BaseException:
            log.exception("%s: process %d failed", self.name, index)
        finally:
            logging.shutdown()
            os._exit(code)

    def _stop(self, signum, _frame) -> None:
        self.stopping = True
        # The kernel queues connections while any process holds a listening socket open: ours
        # must go now, so that once the processes have closed theirs nothing is accepted.
        for sock in self.sockets:
            sock.close()
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) on Linux; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass

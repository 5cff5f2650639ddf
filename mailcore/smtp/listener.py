"""Running SMTP listeners: several binds on one event loop, connection caps, graceful shutdown."""

from __future__ import annotations

import array
import asyncio
import hashlib
import logging
import mmap
import os
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from django.conf import settings

from mailcore.wire import replies
from mailcore.wire.replies import Reply

log = logging.getLogger("mailcore.smtp")

LISTEN_BACKLOG = 512
# How often a process that accepts only under load (Spillover) looks at the load.
SPILLOVER_TICK = 0.01


def shown_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SharedCounts:
    """Open connections, in all and per client address, across the processes of one listener.

    Postfix's anvil(8) in a few lines: `runsmtp --processes N` forks N processes that accept on
    one socket, and the connection caps must hold for all of them together. The counts live in
    anonymous shared memory made before the fork, one row per process: each process writes only
    its own row (so a dead one's row can be cleared by the supervisor) and reads the sum. There
    is no lock, which a process killed while holding it would leave held, stopping every other
    process's event loop; the price is that processes admitting at the same instant may together
    exceed a cap by at most N - 1 connections. Per-address counts are a count-min sketch: each address has one slot under
    each of two keyed hashes and counts as the smaller of the two, so a count is exact unless
    both of its slots are shared with other busy addresses, and then only ever too high.
    """

    SLOTS = 1 << 15  # per hash; memory: 4 octets x (2 + 2 x SLOTS) per process

    def __init__(self, processes: int = 1):
        self.processes = max(1, processes)
        self.width = 1 + 2 * self.SLOTS  # [total, slots of hash 1, slots of hash 2]
        # mmap(-1, ...) is MAP_SHARED | MAP_ANONYMOUS: forked children see the same pages.
        # After the rows, one flag per process: it has its listening servers up (see Spillover).
        self._memory = mmap.mmap(-1, 4 * (self.width + 1) * self.processes)
        self._counts = memoryview(self._memory).cast("i")
        self._serving = self.width * self.processes
        self._key = secrets.token_bytes(16)
        self.process = 0  # the row this process writes; set after the fork

    def _slots(self, address: str) -> tuple[int, int]:
        digest = hashlib.blake2b(address.encode("utf-8", "replace"), key=self._key, digest_size=8).digest()
        return 1 + int.from_bytes(digest[:4]) % self.SLOTS, 1 + self.SLOTS + int.from_bytes(digest[4:]) % self.SLOTS

    def _sum(self, index: int) -> int:
        counts, width = self._counts, self.width
        return sum(counts[row * width + index] for row in range(self.processes))

    def admit(self, address: str, max_total: int, max_per_client: int) -> str | None:
        """Count one more connection from `address`; or say which cap it hits ("total", "client")."""
        first, second = self._slots(address)
        mine = self.process * self.width
        if self._sum(0) >= max_total:
            return "total"
        if min(self._sum(first), self._sum(second)) >= max_per_client:
            return "client"
        for index in (0, first, second):
            self._counts[mine + index] += 1
        return None

    def release(self, address: str) -> None:
        first, second = self._slots(address)
        mine = self.process * self.width
        for index in (0, first, second):
            self._counts[mine + index] -= 1

    def clear(self, process: int) -> None:
        """Forget the connections of a process that died (the supervisor calls this)."""
        self._counts[process * self.width:(process + 1) * self.width] = array.array("i", bytes(4 * self.width))
        self._counts[self._serving + process] = 0

    def total(self) -> int:
        return self._sum(0)

    def set_serving(self) -> None:
        """This process has its listening servers up; cleared by `clear` when it dies."""
        self._counts[self._serving + self.process] = 1

    def serving(self, process: int) -> bool:
        return bool(self._counts[self._serving + process])


class Spillover:
    """When process `index` >= 1 of several accepts connections: only while the others are busy.

    Every process that accepts on the shared sockets is woken by every connection (the kernel
    wakes all epoll waiters; one wins the accept), and one session at a time then costs each
    process a wake-up and alternates the sessions between caches: on two cores, one client
    sending mail one connection after another went from 280 to 177 messages a second with two
    processes. So process 0 always accepts, and process k accepts only while the open sessions
    of all the processes together are at least k x `threshold`, until they fall below that by
    half a threshold and stay there for `linger` seconds. All the processes, not those before
    k: the sum does not depend on how the kernel spread the sessions, so k accepting (and
    taking sessions from the processes before it) does not itself make k stop again.
    A process before k that is not serving (dead and being restarted, or not yet started) is
    stood in for: k accepts whatever the load, so that connections are not left queued.
    """

    def __init__(self, counts: SharedCounts, index: int, threshold: int, linger: float = 0.1):
        self.counts = counts
        self.index = index
        self.start_at = index * max(1, threshold)
        self.stop_below = max(1, self.start_at - max(1, threshold) // 2)
        self.linger = linger
        self.quiet_since: float | None = None

    def accept(self, accepting: bool, now: float) -> bool:
        """Whether to accept from now on, given whether we do."""
        total = self.counts.total()
        if total >= (self.stop_below if accepting else self.start_at) or not all(
            self.counts.serving(process) for process in range(self.index)
        ):
            self.quiet_since = None
            return True
        if not accepting:
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        return now - self.quiet_since < self.linger


class Admitted(Protocol):
    """What the registry and the shutdown need of a session (server.InboundSMTP is one)."""

    client_address: str

    def shutdown_if_idle(self) -> bool: ...

    def close(self) -> None: ...


class ConnectionRegistry:
    """The sessions of one process, admitted against caps that hold across the listener's processes."""

    def __init__(self, max_connections: int, max_per_client: int, counts: SharedCounts | None = None):
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.counts = counts or SharedCounts()
        self.sessions: set[Admitted] = set()
        self.stopping = False

    @classmethod
    def from_settings(cls, counts: SharedCounts | None = None) -> ConnectionRegistry:
        return cls(settings.MAIL_SMTP_MAX_CONNECTIONS, settings.MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT, counts)

    def admit(self, session: Admitted) -> Reply | None:
        """None when the session may go on; otherwise the 421 to send before closing."""
        if self.stopping:
            return replies.SHUTTING_DOWN
        refused = self.counts.admit(session.client_address, self.max_connections, self.max_per_client)
        if refused == "total":
            log.warning("%s: refused, %d connections open", session.client_address, self.counts.total())
            return replies.TOO_MANY_CONNECTIONS
        if refused == "client":
            log.warning("%s: refused, too many connections from this address", session.client_address)
            return replies.TOO_MANY_CONNECTIONS_FROM_CLIENT
        self.sessions.add(session)
        return None

    def release(self, session: Admitted) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.counts.release(session.client_address)


class Listener:
    """Serve one protocol on several addresses until SIGTERM or SIGINT, then stop gracefully.

    Shutdown (operations.md "Processes"): stop accepting, close idle sessions with 421, give
    sessions in a transaction `grace` seconds to finish, close what is left, and wait for
    deliveries already handed to the service layer to commit.
    """

    def __init__(
        self,
        name: str,
        binds: list[tuple[str, int]],
        protocol_factory: Callable[[], asyncio.Protocol],
        registry: ConnectionRegistry,
        grace: float,
        on_stopped: Callable[[], None] | None = None,
        tls_binds: list[tuple[str, int]] = (),
        tls_context: ssl.SSLContext | None = None,
        sockets: list[socket.socket] = (),
        spillover: Spillover | None = None,
    ):
        self.name = name
        self.binds = binds
        # Implicit TLS (RFC 8314 §3.3, the port-465 role): TLS from the first byte on these binds.
        self.tls_binds = list(tls_binds) if tls_context is not None else []
        self.tls_context = tls_context
        self.protocol_factory = protocol_factory
        self.registry = registry
        self.grace = grace
        self.on_stopped = on_stopped
        # Sockets bound by the supervisor of several processes (processes.py), which also said
        # where it listens: used instead of `binds`.
        self.sockets = list(sockets)
        # With `sockets` in a process other than the first: accept only under load (Spillover).
        self.spillover = spillover if self.sockets else None
        self.spill_servers: list[asyncio.Server] = []
        self.stop_requested = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        servers = []
        follower = None
        try:
            if self.spillover is not None:
                follower = asyncio.create_task(self._follow_load())
                follower.add_done_callback(self._follower_done)
            else:
                for sock in self.sockets:
                    servers.append(await loop.create_server(self.protocol_factory, sock=sock, backlog=LISTEN_BACKLOG))
                self.registry.counts.set_serving()
            for (host, port), tls in [] if self.sockets else self._binds_with_tls():
                server = await loop.create_server(
                    self.protocol_factory, host, port, reuse_address=True, backlog=LISTEN_BACKLOG, ssl=tls
                )
                servers.append(server)
                log.info("%s listening on %s%s", self.name, shown_address(host, port), " (implicit TLS)" if tls else "")
            await self.stop_requested.wait()
            log.info("%s stopping: no new connections, %d session(s) open", self.name, len(self.registry.sessions))
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                # Our servers had duplicates: the sockets themselves must go too (processes.py).
                for sock in self.sockets:
                    sock.close()
            for server in servers + self.spill_servers:
                server.close()
            await self._drain_sessions()
            if self.on_stopped is not None:
                await loop.run_in_executor(None, self.on_stopped)
            log.info("%s stopped", self.name)

    async def _follow_load(self) -> None:
        """Accept while the Spillover says so, checking every SPILLOVER_TICK seconds.

        Not accepting is having no server on the sockets, so that this process's event loop does
        not even wake for a connection: a server takes a duplicate of each socket, which its
        close() closes, leaving ours open for the next one.
        """
        loop = asyncio.get_running_loop()
        self.registry.counts.set_serving()
        while True:
            accept = self.spillover.accept(bool(self.spill_servers), time.monotonic())
            if accept and not self.spill_servers:
                for sock in self.sockets:
                    duplicate = socket.socket(fileno=os.dup(sock.fileno()))
                    try:
                        server = await loop.create_server(self.protocol_factory, sock=duplicate, backlog=LISTEN_BACKLOG)
                    except BaseException:
                        duplicate.close()
                        raise
                    self.spill_servers.append(server)
                log.debug("%s: process %d accepting, %d sessions open", self.name, self.spillover.index, self.registry.counts.total())
            elif not accept and self.spill_servers:
                for server in self.spill_servers:
                    server.close()
                self.spill_servers = []
                log.debug("%s: process %d not accepting", self.name, self.spillover.index)
            await asyncio.sleep(SPILLOVER_TICK)

    def _follower_done(self, task: asyncio.Task) -> None:
        # Never accepting again would leave this process up for nothing: stop, to be restarted.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: accepting under load failed: %r; stopping", self.name, task.exception())
            self.stop_requested.set()

    def _binds_with_tls(self) -> list[tuple[tuple[str, int], ssl.SSLContext | None]]:
        return [*((b, None) for b in self.binds), *((b, self.tls_context) for b in self.tls_binds)]

    async def _drain_sessions(self) -> None:
        self.registry.stopping = True
        deadline = time.monotonic() + self.grace
        while self.registry.sessions and time.monotonic() < deadline:
            for session in list(self.registry.sessions):
                session.shutdown_if_idle()
            await asyncio.sleep(0.05)
        for session in list(self.registry.sessions):
            log.info("%s: closing a session still open after the grace period", session.client_address)
            session.close()
        # Let the closed transports run their connection_lost.
        await asyncio.sleep(0)

"""Running SMTP listeners: several binds on one event loop, connection caps, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings

from mailcore.smtp import replies
from mailcore.smtp.replies import Reply

if TYPE_CHECKING:
    from mailcore.smtp.server import InboundSMTP

log = logging.getLogger("mailcore.smtp")


class UnknownIdCounter:
    """GETs of unknown ids per client address over the last minute (reverse-delivery.md §6)."""

    WINDOW = 60.0

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, address: str) -> deque[float]:
        times = self._seen[address]
        cutoff = time.monotonic() - self.WINDOW
        while times and times[0] < cutoff:
            times.popleft()
        return times

    def exhausted(self, address: str) -> bool:
        exhausted = len(self._recent(address)) >= self.limit
        if not self._seen[address]:
            del self._seen[address]
        return exhausted

    def record(self, address: str) -> None:
        self._recent(address).append(time.monotonic())


class ConnectionRegistry:
    """The sessions of one process: caps on connections, and the state that outlives a session."""

    def __init__(self, max_connections: int, max_per_client: int, max_unknown_ids: int):
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.sessions: set[InboundSMTP] = set()
        self.per_client: Counter[str] = Counter()
        self.stopping = False
        self.unknown_ids = UnknownIdCounter(max_unknown_ids)

    @classmethod
    def from_settings(cls) -> ConnectionRegistry:
        return cls(
            settings.MAIL_SMTP_MAX_CONNECTIONS,
            settings.MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT,
            settings.MAIL_GET_MAX_UNKNOWN_PER_MINUTE,
        )

    def admit(self, session: InboundSMTP) -> Reply | None:
        """None when the session may go on; otherwise the 421 to send before closing."""
        if self.stopping:
            return replies.SHUTTING_DOWN
        if len(self.sessions) >= self.max_connections:
            log.warning("%s: refused, %d connections open", session.client_address, len(self.sessions))
            return replies.TOO_MANY_CONNECTIONS
        if self.per_client[session.client_address] >= self.max_per_client:
            log.warning("%s: refused, too many connections from this address", session.client_address)
            return replies.TOO_MANY_CONNECTIONS_FROM_CLIENT
        self.sessions.add(session)
        self.per_client[session.client_address] += 1
        return None

    def release(self, session: InboundSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_client[session.client_address] -= 1
            if self.per_client[session.client_address] <= 0:
                del self.per_client[session.client_address]


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
        self.stop_requested = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        servers = []
        try:
            for (host, port), tls in [*((b, None) for b in self.binds), *((b, self.tls_context) for b in self.tls_binds)]:
                server = await loop.create_server(self.protocol_factory, host, port, reuse_address=True, backlog=512, ssl=tls)
                servers.append(server)
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                log.info("%s listening on %s%s", self.name, shown, " (implicit TLS)" if tls else "")
            await self.stop_requested.wait()
            log.info("%s stopping: no new connections, %d session(s) open", self.name, len(self.registry.sessions))
        finally:
            for server in servers:
                server.close()
            await self._drain_sessions()
            if self.on_stopped is not None:
                await loop.run_in_executor(None, self.on_stopped)
            log.info("%s stopped", self.name)

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

"""Running the POP3 listeners until SIGTERM or SIGINT: settings in, a Pop3Server up, a clean stop."""

from __future__ import annotations

import asyncio
import signal
import ssl

from django.conf import settings

from mailcore.pop3.maildrop import ServiceMaildrop
from mailcore.pop3.protocol import Pop3Config, Pop3Server
from mailcore.services.login_failures import LoginFailures
from mailsite import env

PLAINTEXT_POLICIES = ("loopback", "always", "never")


def config_from_settings() -> Pop3Config:
    if settings.MAIL_POP3_PLAINTEXT not in PLAINTEXT_POLICIES:
        raise ValueError(f"MAIL_POP3_PLAINTEXT must be one of {', '.join(PLAINTEXT_POLICIES)}")
    return Pop3Config(
        hostname=settings.MAIL_HOSTNAME,
        idle_timeout=settings.MAIL_POP3_IDLE_TIMEOUT,
        max_line=settings.MAIL_POP3_MAX_LINE,
        max_bad_commands=settings.MAIL_POP3_MAX_BAD_COMMANDS,
        # Shared with submission: one policy for password guessing, whichever protocol is used.
        # (read from the environment here too, for a tree whose settings.py does not declare them).
        auth_failure_delay=getattr(settings, "MAIL_AUTH_FAILURE_DELAY", env.get_float("MAIL_AUTH_FAILURE_DELAY", 2.0)),
        auth_max_failures=getattr(settings, "MAIL_AUTH_MAX_FAILURES", env.get_int("MAIL_AUTH_MAX_FAILURES", 5)),
        auth_failure_window=getattr(settings, "MAIL_AUTH_FAILURE_WINDOW", env.get_int("MAIL_AUTH_FAILURE_WINDOW", 900)),
        plaintext=settings.MAIL_POP3_PLAINTEXT,
        lock_ttl=settings.MAIL_POP3_LOCK_TTL,
        max_connections=settings.MAIL_POP3_MAX_CONNECTIONS,
        max_connections_per_client=settings.MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT,
        shutdown_grace=settings.MAIL_POP3_SHUTDOWN_GRACE,
    )


async def serve(
    config: Pop3Config,
    binds: list[tuple[str, int]],
    tls_binds: list[tuple[str, int]],
    tls_context: ssl.SSLContext | None,
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    failures = LoginFailures(config.auth_max_failures, config.auth_failure_window)
    server = Pop3Server(config, ServiceMaildrop(lock_ttl=config.lock_ttl, failures=failures), tls_context)
    await server.start(binds, tls_binds)
    await stopping.wait()
    await server.stop()

"""manage.py runsmtp [--bind HOST:PORT ...]: the inbound SMTP listener (the MX role)."""

from __future__ import annotations

import asyncio
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailcore.smtp.handler import InboundHandler
from mailcore.smtp.listener import ConnectionRegistry, Listener, SharedCounts, Spillover
from mailcore.smtp.processes import SPILLOVER_SESSIONS, Supervisor, bind_sockets
from mailcore.smtp.server import InboundSMTP, SMTPConfig
from mailcore.store import message_store
from mailsite.env import parse_binds


class Command(BaseCommand):
    help = "Receive mail for the local domains by SMTP (the MX role), with SOURCE and GET."

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind", action="append", metavar="HOST:PORT", help="Listen here instead of MAIL_SMTP_BIND (repeatable)."
        )
        parser.add_argument(
            "--processes", type=int, metavar="N", help="Serve from N processes instead of MAIL_SMTP_PROCESSES."
        )

    def handle(self, *args, **options):
        try:
            binds = parse_binds(",".join(options["bind"])) if options["bind"] else settings.MAIL_SMTP_BIND
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # A body half-written when a previous run was killed is a `.tmp-` file: never referenced
        # by any row, so it is removed before we acknowledge anything.
        storage = message_store().storage
        if hasattr(storage, "clean_temporary"):
            storage.clean_temporary()
        processes = options["processes"] if options["processes"] is not None else settings.MAIL_SMTP_PROCESSES
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes == 1:
            asyncio.run(serve_inbound(binds))
            return
        name = "inbound SMTP (MX)"
        try:
            sockets = bind_sockets(name, binds)
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc}") from None
        counts = SharedCounts(processes)
        status = Supervisor(
            name, processes, sockets, counts, lambda index: asyncio.run(serve_inbound(binds, sockets, counts, index))
        ).run()
        if status:
            raise CommandError("the listener processes kept dying; see the log above")


async def serve_inbound(
    binds: list[tuple[str, int]], sockets: list[socket.socket] = (), counts: SharedCounts | None = None, index: int = 0
) -> None:
    config = SMTPConfig.from_settings()
    handler = InboundHandler()
    registry = ConnectionRegistry.from_settings(counts)
    listener = Listener(
        "inbound SMTP (MX)",
        binds,
        lambda: InboundSMTP(handler, config, registry),
        registry,
        grace=settings.MAIL_SMTP_SHUTDOWN_GRACE,
        on_stopped=handler.close,
        sockets=sockets,
        # Process 0 always accepts; the others when the load spills over (listener.Spillover).
        spillover=Spillover(counts, index, SPILLOVER_SESSIONS) if index else None,
    )
    await listener.serve()

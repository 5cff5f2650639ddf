"""manage.py runsmtp [--bind HOST:PORT ...]: the inbound SMTP listener (the MX role)."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailcore.smtp.handler import InboundHandler
from mailcore.smtp.listener import ConnectionRegistry, Listener
from mailcore.smtp.server import InboundSMTP, SMTPConfig
from mailcore.store import message_store
from mailsite.env import parse_binds


class Command(BaseCommand):
    help = "Receive mail for the local domains by SMTP (the MX role), with SOURCE and GET."

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind", action="append", metavar="HOST:PORT", help="Listen here instead of MAIL_SMTP_BIND (repeatable)."
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
        asyncio.run(serve_inbound(binds))


async def serve_inbound(binds: list[tuple[str, int]]) -> None:
    config = SMTPConfig.from_settings()
    handler = InboundHandler()
    registry = ConnectionRegistry.from_settings()
    listener = Listener(
        "inbound SMTP (MX)",
        binds,
        lambda: InboundSMTP(handler, config, registry),
        registry,
        grace=settings.MAIL_SMTP_SHUTDOWN_GRACE,
        on_stopped=handler.close,
    )
    await listener.serve()

"""manage.py runsubmission [--bind HOST:PORT ...]: the authenticated submission listener (the port-587 role)."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailcore.smtp.listener import ConnectionRegistry, Listener
from mailcore.smtp.server import SMTPConfig
from mailcore.smtp.submission import SubmissionHandler, SubmissionSMTP
from mailsite.env import parse_binds


class Command(BaseCommand):
    help = "Accept mail from authenticated local users (AUTH PLAIN/LOGIN) and deliver or queue it."

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind", action="append", metavar="HOST:PORT", help="Listen here instead of MAIL_SUBMISSION_BIND (repeatable)."
        )
        parser.add_argument(
            "--tls-bind",
            action="append",
            metavar="HOST:PORT",
            help="Implicit TLS here (the port-465 role) instead of MAIL_SUBMISSION_TLS_BIND; needs MAIL_TLS_CERT/KEY.",
        )

    def handle(self, *args, **options):
        try:
            binds = parse_binds(",".join(options["bind"])) if options["bind"] else settings.MAIL_SUBMISSION_BIND
            tls_binds = parse_binds(",".join(options["tls_bind"])) if options["tls_bind"] else settings.MAIL_SUBMISSION_TLS_BIND
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if tls_binds and not (settings.MAIL_TLS_CERT and settings.MAIL_TLS_KEY):
            raise CommandError("runsubmission: implicit TLS needs MAIL_TLS_CERT and MAIL_TLS_KEY")
        asyncio.run(serve_submission(binds, tls_binds))


async def serve_submission(binds: list[tuple[str, int]], tls_binds: list[tuple[str, int]] = ()) -> None:
    config = SMTPConfig.from_settings()
    handler = SubmissionHandler()
    registry = ConnectionRegistry.from_settings()
    plaintext_auth = settings.MAIL_SUBMISSION_PLAINTEXT_AUTH
    listener = Listener(
        "submission",
        binds,
        lambda: SubmissionSMTP(handler, config, registry, plaintext_auth=plaintext_auth),
        registry,
        grace=settings.MAIL_SMTP_SHUTDOWN_GRACE,
        on_stopped=handler.close,
        tls_binds=tls_binds,
        tls_context=config.tls_context,
    )
    await listener.serve()

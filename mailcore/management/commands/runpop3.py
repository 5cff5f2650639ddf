"""manage.py runpop3 [--bind HOST:PORT ...] [--tls-bind HOST:PORT ...]: the POP3 listener."""

from __future__ import annotations

import asyncio
import ssl

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailcore import tls
from mailcore.pop3 import listener
from mailsite.env import parse_binds


class Command(BaseCommand):
    help = "Serve POP3 (RFC 1939) with STLS, and implicit TLS on --tls-bind, until SIGTERM or SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--bind", action="append", metavar="HOST:PORT", help="overrides MAIL_POP3_BIND; repeatable")
        parser.add_argument(
            "--tls-bind", action="append", metavar="HOST:PORT", help="implicit TLS (the port-995 role); repeatable"
        )

    def handle(self, *args, **options):
        try:
            binds = parse_binds(",".join(options["bind"])) if options["bind"] else settings.MAIL_POP3_BIND
            tls_binds = parse_binds(",".join(options["tls_bind"])) if options["tls_bind"] else settings.MAIL_POP3_TLS_BIND
            config = listener.config_from_settings()
            tls_context = tls.server_context()
        except (ValueError, OSError, ssl.SSLError) as exc:
            raise CommandError(f"runpop3: {exc}") from None
        if tls_binds and tls_context is None:
            raise CommandError("runpop3: --tls-bind needs MAIL_TLS_CERT and MAIL_TLS_KEY")
        if not binds and not tls_binds:
            raise CommandError("runpop3: nothing to listen on")
        try:
            asyncio.run(listener.serve(config, binds, tls_binds, tls_context))
        except OSError as exc:  # a port in use, an address not on this host
            raise CommandError(f"runpop3: {exc}") from None

"""manage.py runweb: the web UI on a production WSGI server (waitress), static files included (whitenoise)."""

from __future__ import annotations

import logging
import signal

import waitress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.core.wsgi import get_wsgi_application

from mailcore.web.static import with_static_files
from mailsite import env

log = logging.getLogger("mailcore.web")


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Command(BaseCommand):
    help = "Serve the web UI (the admin console and the mailbox self-service) with waitress."

    def add_arguments(self, parser):
        parser.add_argument("--bind", action="append", metavar="HOST:PORT", help="listen here instead of MAIL_WEB_BIND (repeatable)")
        parser.add_argument("--threads", type=int, default=8, help="request threads (default 8)")

    def handle(self, *args, bind=None, threads=8, **options):
        try:
            binds = env.parse_binds(",".join(bind)) if bind else settings.MAIL_WEB_BIND
        except ValueError as exc:
            raise CommandError(str(exc))
        application = with_static_files(get_wsgi_application())
        listen = " ".join(_listen_address(host, port) for host, port in binds)
        try:
            # waitress's own proxy handling trusts one address only; mailcore.web.proxy trusts the
            # networks of MAIL_WEB_TRUSTED_PROXIES and drops the headers of every other peer.
            server = waitress.create_server(
                application, listen=listen, threads=threads, ident="mailcore", clear_untrusted_proxy_headers=False
            )
        except OSError as exc:
            raise CommandError(f"runweb: cannot listen on {listen}: {exc}")

        def stop(signum, frame):
            # waitress's run() loop ends on SystemExit and lets its worker threads finish their requests.
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for host, port in binds:
            self.stdout.write(f"runweb: web UI listening on http://{_listen_address(host, port)}/admin/")
        self.stdout.flush()
        server.run()
        server.close()
        self.stdout.write("runweb: stopped")

"""manage.py spam thresholds|set|check: per-domain spam thresholds, and scoring a message with spamd."""

import sys

from django.core.management.base import CommandError

from mailcore.management.base import MailCommand
from mailcore.services import spam
from mailcore.spam.check import configured_client
from mailcore.spam.spamd import SpamdError


def score_or_off(value: str) -> float | None:
    if value.strip().lower() in ("off", "none", ""):
        return None
    return float(value)


class Command(MailCommand):
    help = "Spam thresholds per domain (verified, unverified, reject), and a spamd check of a message."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        show = sub.add_parser("thresholds", help="show the spam thresholds of one or every domain")
        show.add_argument("name", nargs="?")
        change = sub.add_parser("set", help="change a domain's spam thresholds")
        change.add_argument("name")
        change.add_argument("--verified", type=float, help="score at which verified mail is quarantined")
        change.add_argument("--unverified", type=float, help="score at which unverified mail is quarantined")
        change.add_argument("--reject", type=score_or_off, default=spam.KEEP,
                            help="score at which spam is refused with 550 5.7.1; 'off' never refuses")
        sub.add_parser("check", help="score a message read on stdin with the spamd of MAIL_SPAMD")

    def handle(self, *args, action, **options):
        if action == "thresholds":
            for domain in spam.thresholds_of(options["name"]):
                self.stdout.write(spam.describe(domain))
        elif action == "set":
            domain = spam.set_thresholds(
                options["name"], verified=options["verified"], unverified=options["unverified"], reject=options["reject"]
            )
            self.stdout.write(spam.describe(domain))
        elif action == "check":
            client = configured_client()
            if client is None:
                raise CommandError("the spam check is off: set MAIL_SPAMD=HOST:PORT")
            content = sys.stdin.buffer.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            try:
                report = client.symbols(content)
            except SpamdError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"score={report.score:g} rules={','.join(report.rules) or '-'}")

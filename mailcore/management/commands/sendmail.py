"""manage.py sendmail -f SENDER RCPT... < message."""

from django.core.management.base import CommandError

from mailcore.management.base import MailCommand


class Command(MailCommand):
    help = "Read a message on standard input and queue it for delivery, like /usr/sbin/sendmail -f."

    def add_arguments(self, parser):
        parser.add_argument("-f", dest="sender", required=True)
        parser.add_argument("recipients", nargs="+")

    def handle(self, *args, **options):
        raise CommandError("sendmail: the outbound delivery engine is not built yet (issue: outbound mail)")

"""manage.py flushq: try every deferred outbound message now."""

from django.core.management.base import CommandError

from mailcore.management.base import MailCommand


class Command(MailCommand):
    help = "Try every deferred outbound message now."

    def handle(self, *args, **options):
        raise CommandError("flushq: the outbound delivery engine is not built yet (issue: outbound mail)")

"""manage.py callbacks [--run]: the announcements received by SOURCE."""

from django.core.management.base import CommandError

from mailcore.management.base import MailCommand
from mailcore.models import Announcement


class Command(MailCommand):
    help = "List pending, verified and failed announcements; --run runs one verification sweep now."

    def add_arguments(self, parser):
        parser.add_argument("--run", action="store_true")

    def handle(self, *args, **options):
        if options["run"]:
            raise CommandError("callbacks --run: the verification sweep is not built yet (issue: reverse delivery)")
        for a in Announcement.objects.order_by("-received_at"):
            self.stdout.write(
                f"{a.source_id}\t{a.state}\t{a.attempts}\t<{a.mail_from}>\t{a.client_address}\t{a.helo_name}\t{a.last_error}"
            )

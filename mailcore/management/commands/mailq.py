"""manage.py mailq: the outbound queue, one line per message and recipient."""

from mailcore.management.base import MailCommand
from mailcore.services import outbound


class Command(MailCommand):
    help = "Show the outbound queue (messages not yet sent or bounced), with each item's last reply."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="include sent and bounced items")

    def handle(self, *args, **options):
        count = 0
        for item in outbound.listing(include_finished=options["all"]):
            count += 1
            reply = " ".join(item.last_reply.split())[:200] or "-"
            self.stdout.write(
                f"{item.message.queue_id}\t{item.state}\t{item.attempts}\t{item.next_attempt_at:%Y-%m-%d %H:%M:%S}\t"
                f"<{item.message.mail_from}>\t{item.recipient}\t{reply}"
            )
        if not count:
            self.stdout.write("Mail queue is empty")

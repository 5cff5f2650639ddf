"""manage.py mailq: the outbound queue, one line per message and recipient."""

from mailcore.management.base import MailCommand
from mailcore.models import QueueItem, QueueState


class Command(MailCommand):
    help = "Show the outbound queue (messages not yet sent or bounced)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="include sent and bounced items")

    def handle(self, *args, **options):
        items = QueueItem.objects.select_related("message").order_by("created_at", "id")
        if not options["all"]:
            items = items.filter(state__in=[QueueState.QUEUED, QueueState.DEFERRED, QueueState.HELD])
        count = 0
        for item in items:
            count += 1
            reply = item.last_reply.replace("\n", " ")[:120]
            self.stdout.write(
                f"{item.message.queue_id}\t{item.state}\t{item.attempts}\t{item.next_attempt_at:%Y-%m-%d %H:%M:%S}\t"
                f"<{item.message.mail_from}>\t{item.recipient}\t{reply}"
            )
        if not count:
            self.stdout.write("Mail queue is empty")

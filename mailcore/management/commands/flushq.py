"""manage.py flushq: try every deferred outbound message now, in the foreground."""

from mailcore.management.base import MailCommand
from mailcore.services import outbound
from mailcore.workers.outbound_queue import deliver_domain


class Command(MailCommand):
    help = "Make every deferred outbound message due and try to deliver it now."

    def handle(self, *args, **options):
        outbound.make_deferred_due()
        domains = outbound.due_domains()
        if not domains:
            self.stdout.write("flushq: nothing to deliver")
            return
        for domain in domains:
            counts = deliver_domain(domain)
            self.stdout.write(
                f"flushq: {domain}: {counts.sent} sent, {counts.deferred} deferred, {counts.bounced} bounced"
                + (f", {counts.lost_claims} taken over by another worker" if counts.lost_claims else "")
            )

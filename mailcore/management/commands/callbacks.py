"""manage.py callbacks [--run]: the announcements received by SOURCE, and one sweep on demand."""

from mailcore.management.base import MailCommand
from mailcore.models import AnnouncementState
from mailcore.services import callbacks


class Command(MailCommand):
    help = (
        "List pending, verified, unverified and failed announcements (failed ones with the reason: "
        "the forgery log); --run runs one verification sweep now, in the foreground."
    )

    def add_arguments(self, parser):
        parser.add_argument("--run", action="store_true", help="run one verification sweep now and print what it did")
        parser.add_argument("--state", choices=AnnouncementState.values, help="list only announcements in this state")

    def handle(self, *args, **options):
        if options["run"]:
            return self.run_sweep()
        totals = callbacks.counts()
        self.stdout.write("  ".join(f"{state}: {totals[state]}" for state in AnnouncementState.values))
        for a in callbacks.listing(options["state"]):
            line = (
                f"{a.source_id}\t{a.state}\t{a.received_at:%Y-%m-%d %H:%M:%S}\t<{a.mail_from}>\t"
                f"{a.client_address}\t{a.helo_name}\tattempts={a.attempts}"
            )
            if a.state == AnnouncementState.PENDING:
                line += f"\tnext={a.next_attempt_at:%Y-%m-%d %H:%M:%S}"
            if a.origin_host:
                line += f"\tfrom={a.origin_host}"
            if a.last_error:
                line += f"\treason={a.last_error}"
            self.stdout.write(line)

    def run_sweep(self):
        from mailcore.verification.sweep import run_sweep

        report = run_sweep()
        for connection in report.connections:
            self.stdout.write(f"connected {connection}")
        for outcome in report.outcomes:
            line = f"{outcome.source_id}\t{outcome.state}"
            if outcome.queue_id:
                line += f"\tqueue-id={outcome.queue_id}"
            if outcome.detail:
                line += f"\t{outcome.detail}"
            self.stdout.write(line)
        self.stdout.write(f"sweep: {report.summary()}")

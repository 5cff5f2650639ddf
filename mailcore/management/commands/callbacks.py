"""manage.py callbacks [--run] | pins | forget DOMAIN: announcements, one sweep on demand, the downgrade memory."""

from django.core.management.base import CommandError

from mailcore.addresses import AddressError, normalize_domain
from mailcore.management.base import MailCommand
from mailcore.models import AnnouncementState
from mailcore.services import pins, pulls
from mailcore.workers.pull_sweep import run_sweep


class Command(MailCommand):
    help = (
        "List pending, verified, unverified and failed announcements (failed ones with the reason: "
        "the forgery log); --run runs one verification sweep now, in the foreground. "
        "`pins` lists the sender domains remembered as delivering by SOURCE (reverse-delivery.md §5.8); "
        "`forget DOMAIN` forgets one, so that its DATA mail is plain unverified again."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", nargs="?", choices=["pins", "forget"], help="pins: list remembered domains; forget DOMAIN")
        parser.add_argument("domain", nargs="?", help="the domain to forget")
        parser.add_argument("--run", action="store_true", help="run one verification sweep now and print what it did")
        parser.add_argument("--state", choices=AnnouncementState.values, help="list only announcements in this state")

    def handle(self, *args, **options):
        if options["action"] == "pins":
            return self.list_pins()
        if options["action"] == "forget":
            return self.forget(options["domain"])
        if options["domain"]:
            raise CommandError(f"unexpected argument {options['domain']!r}")
        if options["run"]:
            return self.run_sweep()
        totals = pulls.counts()
        self.stdout.write("  ".join(f"{state}: {totals[state]}" for state in AnnouncementState.values))
        for a in pulls.listing(options["state"]):
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

    def list_pins(self):
        for pin in pins.listing():
            self.stdout.write(
                f"{pin.domain}\tlast verified {pin.last_verified_at:%Y-%m-%d %H:%M:%S}\t"
                f"{pin.verified_count} verified\tremembered until {pin.expires_at:%Y-%m-%d %H:%M:%S}"
            )

    def forget(self, domain: str | None):
        if not domain:
            raise CommandError("give the domain to forget: callbacks forget DOMAIN")
        try:
            domain = normalize_domain(domain)
        except AddressError as exc:
            raise CommandError(str(exc)) from None
        if not pins.forget(domain):
            raise CommandError(f"{domain} is not remembered as delivering by SOURCE")
        self.stdout.write(f"forgot {domain}: its DATA mail is plain unverified again")

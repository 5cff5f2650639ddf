"""manage.py quarantine list|release ID|delete ID."""

from mailcore.management.base import MailCommand
from mailcore.services import quarantine


class Command(MailCommand):
    help = "List, release or delete quarantined mail."
    expected_errors = MailCommand.expected_errors + (quarantine.QuarantineError,)

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="list held mail")
        for name in ("release", "delete"):
            action = sub.add_parser(name, help=f"{name} a held message")
            action.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        if action == "list":
            for d in quarantine.held():
                m = d.message
                self.stdout.write(
                    f"{d.pk}\t{d.delivered_at:%Y-%m-%d %H:%M:%S}\t{d.mailbox.address}\t<{m.mail_from}>\t"
                    f"{m.client_address}\t{d.reason}\t{m.subject}"
                )
        elif action == "release":
            d = quarantine.release(options["id"])
            self.stdout.write(f"released {d.pk} to {d.mailbox.address}")
        else:
            d = quarantine.delete(options["id"])
            self.stdout.write(f"deleted {d.pk} from {d.mailbox.address}")

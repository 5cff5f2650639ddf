"""manage.py sender allow|block PATTERN [--for D|M] | list [--for ...] | remove PATTERN [--for ...]."""

from mailcore.management.base import MailCommand
from mailcore.services import senders


class Command(MailCommand):
    help = "Sender allow and block lists: global, for one domain, or for one mailbox (--for)."
    expected_errors = MailCommand.expected_errors + (senders.SenderListError,)

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        for name, text in (
            ("allow", "deliver matching unverified mail to the inbox"),
            ("block", "refuse matching mail with 550 5.7.1"),
            ("remove", "remove an entry"),
        ):
            command = sub.add_parser(name, help=text)
            command.add_argument("pattern", help="user@example.org, @example.org, 192.0.2.7 or 192.0.2.0/24")
            command.add_argument("--for", dest="target", help="a local domain or mailbox; default: every local domain")
        listing = sub.add_parser("list", help="list the entries")
        listing.add_argument("--for", dest="target", help="only the entries of this domain or mailbox")

    def handle(self, *args, action, target=None, **options):
        if action == "list":
            scope = senders.scope_for(target) if target else None
            for rule in senders.entries(scope):
                self.stdout.write(f"{rule.action}\t{rule.pattern}\t{rule.scope_name}")
            return
        scope = senders.scope_for(target)
        if action == "remove":
            senders.remove_entry(options["pattern"], scope)
            self.stdout.write(f"removed {senders.normalize_pattern(options['pattern'])} for {scope.name}")
            return
        rule = senders.set_entry(action, options["pattern"], scope)
        self.stdout.write(f"{rule.action} {rule.pattern} for {scope.name}")

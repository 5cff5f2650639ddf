"""manage.py domain add|set|list|remove: the local domains and their unverified-mail policy."""

from mailcore.management.base import MailCommand
from mailcore.models import UnverifiedPolicy
from mailcore.services import accounts


class Command(MailCommand):
    help = "Manage the local domains."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a local domain")
        add.add_argument("name")
        add.add_argument("--unverified", choices=UnverifiedPolicy.values, default=UnverifiedPolicy.ACCEPT)
        change = sub.add_parser("set", help="change a domain's policy")
        change.add_argument("name")
        change.add_argument("--unverified", choices=UnverifiedPolicy.values)
        change.add_argument("--active", choices=["yes", "no"])
        sub.add_parser("list", help="list the local domains")
        remove = sub.add_parser("remove", help="remove a domain")
        remove.add_argument("name")

    def handle(self, *args, action, **options):
        if action == "add":
            domain = accounts.add_domain(options["name"], options["unverified"])
            self.stdout.write(f"added {domain.name} (unverified mail: {domain.unverified_policy})")
        elif action == "set":
            active = None if options["active"] is None else options["active"] == "yes"
            domain = accounts.set_domain(options["name"], unverified_policy=options["unverified"], active=active)
            self.stdout.write(f"{domain.name}: unverified mail {domain.unverified_policy}, active {domain.active}")
        elif action == "list":
            for domain in accounts.list_domains():
                state = "active" if domain.active else "inactive"
                self.stdout.write(f"{domain.name}\tunverified={domain.unverified_policy}\t{state}")
        elif action == "remove":
            accounts.remove_domain(options["name"])
            self.stdout.write(f"removed {options['name']}")

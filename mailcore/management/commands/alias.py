"""manage.py alias add|list|remove."""

from mailcore.management.base import MailCommand
from mailcore.services import accounts


class Command(MailCommand):
    help = "Manage aliases: an address (or @domain, a catch-all) to local or remote targets."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add an alias to one or more targets")
        add.add_argument("source")
        add.add_argument("targets", nargs="+")
        sub.add_parser("list", help="list aliases")
        remove = sub.add_parser("remove", help="remove an alias (all its targets, or one)")
        remove.add_argument("source")
        remove.add_argument("target", nargs="?")

    def handle(self, *args, action, **options):
        if action == "add":
            aliases = accounts.add_aliases(options["source"], options["targets"])
            for alias in aliases:
                self.stdout.write(f"added {alias.source} -> {alias.target}")
        elif action == "list":
            for alias in accounts.list_aliases():
                self.stdout.write(f"{alias.source}\t{alias.target}")
        elif action == "remove":
            removed = accounts.remove_alias(options["source"], options["target"])
            self.stdout.write(f"removed {removed} alias row(s) for {options['source']}")

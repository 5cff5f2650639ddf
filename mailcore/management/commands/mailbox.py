"""manage.py mailbox add|passwd|list|remove."""

from mailcore.management.base import MailCommand
from mailcore.services import accounts


class Command(MailCommand):
    help = "Manage mailboxes. Passwords are read from standard input, never from the command line."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a mailbox")
        add.add_argument("address")
        add.add_argument("--password-stdin", action="store_true")
        add.add_argument("--quota", type=int, default=None, help="bytes")
        passwd = sub.add_parser("passwd", help="set a mailbox's password")
        passwd.add_argument("address")
        passwd.add_argument("--password-stdin", action="store_true")
        listing = sub.add_parser("list", help="list mailboxes")
        listing.add_argument("domain", nargs="?")
        remove = sub.add_parser("remove", help="remove a mailbox and its mail")
        remove.add_argument("address")

    def handle(self, *args, action, **options):
        if action == "add":
            accounts.get_domain(options["address"].rpartition("@")[2])  # unknown domain: fail before reading
            mailbox = accounts.add_mailbox(options["address"], self.read_password(options), options["quota"])
            self.stdout.write(f"added {mailbox.address}")
        elif action == "passwd":
            accounts.get_mailbox(options["address"])
            mailbox = accounts.set_password(options["address"], self.read_password(options))
            self.stdout.write(f"password changed for {mailbox.address}")
        elif action == "list":
            for mailbox in accounts.list_mailboxes(options["domain"]):
                quota = f"quota={mailbox.quota_bytes}" if mailbox.quota_bytes else "quota=none"
                state = "active" if mailbox.active else "inactive"
                self.stdout.write(f"{mailbox.address}\t{quota}\t{state}")
        elif action == "remove":
            accounts.remove_mailbox(options["address"])
            self.stdout.write(f"removed {options['address']}")

"""manage.py domain add|set|list|remove|dns|dkim: the local domains, their policies, DNS records and DKIM keys."""

from mailcore.management.base import MailCommand
from mailcore.models import AuthenticatedPolicy, UnverifiedPolicy
from mailcore.services import accounts, dkim_keys


class Command(MailCommand):
    help = "Manage the local domains."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a local domain (and make its DKIM keys)")
        add.add_argument("name")
        add.add_argument("--unverified", choices=UnverifiedPolicy.values, default=UnverifiedPolicy.ACCEPT)
        add.add_argument("--authenticated", choices=AuthenticatedPolicy.values)
        change = sub.add_parser("set", help="change a domain's policy")
        change.add_argument("name")
        change.add_argument("--unverified", choices=UnverifiedPolicy.values)
        change.add_argument(
            "--authenticated",
            choices=AuthenticatedPolicy.values,
            help="mail that passes DMARC but was not verified by SOURCE: treated as verified (default) or unverified",
        )
        change.add_argument("--active", choices=["yes", "no"])
        sub.add_parser("list", help="list the local domains")
        remove = sub.add_parser("remove", help="remove a domain")
        remove.add_argument("name")
        dns = sub.add_parser("dns", help="print the DNS records to publish (zone-file lines)")
        dns.add_argument("name")
        dkim = sub.add_parser("dkim", help="the domain's DKIM keys")
        dkim_sub = dkim.add_subparsers(dest="dkim_action", required=True)
        dkim_sub.add_parser("list", help="list the keys").add_argument("name")
        dkim_sub.add_parser("rotate", help="new keys sign from now on; the old stay published").add_argument("name")
        withdraw = dkim_sub.add_parser("withdraw", help="stop publishing a retired key")
        withdraw.add_argument("name")
        withdraw.add_argument("selector")

    def handle(self, *args, action, **options):
        if action == "add":
            domain = accounts.add_domain(options["name"], options["unverified"])
            if options["authenticated"]:
                domain = accounts.set_domain(domain.name, authenticated_policy=options["authenticated"])
            self.stdout.write(f"added {domain.name} (unverified mail: {domain.unverified_policy})")
        elif action == "set":
            active = None if options["active"] is None else options["active"] == "yes"
            domain = accounts.set_domain(
                options["name"], unverified_policy=options["unverified"], active=active, authenticated_policy=options["authenticated"]
            )
            self.stdout.write(f"{domain.name}: unverified mail {domain.unverified_policy}, active {domain.active}")
            if options["authenticated"]:
                self.stdout.write(f"{domain.name}: authenticated mail treated as {domain.authenticated_policy}")
        elif action == "list":
            for domain in accounts.list_domains():
                state = "active" if domain.active else "inactive"
                self.stdout.write(f"{domain.name}\tunverified={domain.unverified_policy}\t{state}")
        elif action == "remove":
            accounts.remove_domain(options["name"])
            self.stdout.write(f"removed {options['name']}")
        elif action == "dns":
            for line in dkim_keys.zone_lines(options["name"]):
                self.stdout.write(line)
        elif action == "dkim":
            self.handle_dkim(options["dkim_action"], options)

    def handle_dkim(self, action, options):
        name = options["name"]
        if action == "list":
            for key in dkim_keys.list_keys(name):
                self.stdout.write(f"{key.selector}\t{key.algorithm}\t{key.state}\t{key.created_at:%Y-%m-%d %H:%M}")
        elif action == "rotate":
            new, old = dkim_keys.rotate(name)
            self.stdout.write(f"{name}: signing with {', '.join(k.selector for k in new)}")
            if old:
                self.stdout.write(
                    f"retired {', '.join(k.selector for k in old)}: still published until"
                    f" `domain dkim withdraw {name} SELECTOR`; publish the new records (`domain dns {name}`)"
                )
        elif action == "withdraw":
            dkim_keys.withdraw(name, options["selector"])
            self.stdout.write(f"{name}: withdrew {options['selector']}")

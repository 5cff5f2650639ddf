"""manage.py quarantine list | release ID | delete ID [--spam] | digest [--send] | expire."""

from mailcore.authentication.results import summary_line
from mailcore.management.base import MailCommand
from mailcore.quarantine import digest
from mailcore.services import digests, quarantine


class Command(MailCommand):
    help = "List, release or delete quarantined mail; print or mail the digests; apply the retention."
    expected_errors = MailCommand.expected_errors + (quarantine.QuarantineError,)

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser(
            "list", help="list held mail: id, held at, mailbox, envelope sender, client, reason, verdict, authentication, subject"
        )
        for name in ("release", "delete"):
            action = sub.add_parser(name, help=f"{name} a held message")
            action.add_argument("id", type=int)
            if name == "delete":
                action.add_argument("--spam", action="store_true", help="it is spam: report it to spamd")
        digest = sub.add_parser("digest", help="print each mailbox's digest of held mail (or mail it with --send)")
        digest.add_argument("--send", action="store_true", help="mail it to each mailbox with newly held mail")
        sub.add_parser("expire", help="delete held mail older than MAIL_QUARANTINE_RETENTION_DAYS now")

    def handle(self, *args, action, **options):
        if action == "list":
            for d in quarantine.held():
                m = d.message
                self.stdout.write(
                    f"{d.pk}\t{d.delivered_at:%Y-%m-%d %H:%M:%S}\t{d.mailbox.address}\t<{m.mail_from}>\t"
                    f"{m.client_address}\t{d.reason}\t{m.verification}\t{summary_line(m.auth_methods or {})}\t{m.subject}"
                )
        elif action == "release":
            d = quarantine.release(options["id"])
            self.stdout.write(f"released {d.pk} to {d.mailbox.address}")
        elif action == "delete":
            d = quarantine.delete(options["id"], as_spam=options["spam"])
            self.stdout.write(f"deleted {d.pk} from {d.mailbox.address}{' as spam' if options['spam'] else ''}")
        elif action == "digest":
            self.digest(options["send"])
        else:
            self.stdout.write(f"deleted {quarantine.expire_held()} held message(s) past the retention")

    def digest(self, send: bool) -> None:
        if send:
            # On demand: every mailbox with mail held since its last digest, whatever the interval.
            for address in digest.send_due(force=True):
                self.stdout.write(f"digest sent to {address}")
            return
        for mailbox, state in digests.mailboxes_with_new_held_mail():
            self.stdout.write(f"==> {mailbox.address}")
            self.stdout.write(digest.build(mailbox, state.last_held_id if state else 0).text())

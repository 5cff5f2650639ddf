"""manage.py sendmail -f SENDER RCPT... < message: submit a message like /usr/sbin/sendmail -f."""

import sys

from django.core.management.base import CommandError

from mailcore.addresses import AddressError, normalize_address
from mailcore.management.base import MailCommand
from mailcore.models import Transport
from mailcore.services import outbound


class Command(MailCommand):
    help = "Read a message on standard input and queue it for delivery, like /usr/sbin/sendmail -f."
    expected_errors = (*MailCommand.expected_errors, outbound.SubmissionError)

    def add_arguments(self, parser):
        parser.add_argument("-f", dest="sender", required=True, help="the envelope sender (reverse-path); '<>' for none")
        parser.add_argument("recipients", nargs="+")

    def handle(self, *args, **options):
        sender = options["sender"].strip()
        if sender in ("", "<>"):
            sender = ""
        else:
            try:
                sender = normalize_address(sender)
            except AddressError as exc:
                raise CommandError(f"sendmail: bad sender: {exc}") from None
        recipients = [outbound.check_submission_recipient(r) for r in options["recipients"]]
        content = sys.stdin.buffer.read()
        if not content.strip():
            raise CommandError("sendmail: no message on standard input")
        content = outbound.add_missing_headers(content, sender, add_from=True)
        submission = outbound.Submission(
            mail_from=sender,
            rcpt_tos=recipients,
            client_address="127.0.0.1",
            helo_name="localhost",
            transport=Transport.LOCAL,
            protocol="local",
            authenticated_as="the operator (sendmail)",
        )
        receipt = outbound.submit(submission, content)
        parts = []
        if receipt.delivered:
            parts.append(f"delivered to {', '.join(receipt.delivered)}")
        if receipt.queued:
            parts.append(f"queued for {', '.join(receipt.queued)}")
        self.stdout.write(f"{receipt.queue_id}: {'; '.join(parts) or 'no recipient took it'}")

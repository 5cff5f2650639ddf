"""What every operator command shares: one-line errors and a non-zero exit on bad input."""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from mailcore.addresses import AddressError
from mailcore.services import audit
from mailcore.services.accounts import AccountError


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


class MailCommand(BaseCommand):
    """A command whose expected failures print one line and exit 1, never a traceback."""

    expected_errors: tuple[type[Exception], ...] = (AccountError, AddressError)

    def execute(self, *args, **options):
        # The audit log names the operator's command line as the actor of what a command changes.
        try:
            with audit.acting(audit.Actor("cli", f"{_operator()} (manage.py {self._command_name()})")):
                return super().execute(*args, **options)
        except self.expected_errors as exc:
            raise CommandError(str(exc)) from None

    def _command_name(self) -> str:
        return type(self).__module__.rpartition(".")[2]

    def read_password(self, options) -> str:
        if not options.get("password_stdin"):
            raise CommandError("give the password on standard input with --password-stdin")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        return password

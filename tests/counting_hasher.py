"""A password hasher that writes a line to $MAIL_TEST_HASHER_LOG each time it runs, so a test can
count how many passwords a server process checked; hashes are the stock PBKDF2 ones."""

from __future__ import annotations

import os

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class CountingPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    def encode(self, password, salt, iterations=None):
        # verify() and make_password() both come here: one line per run of the slow function.
        log = os.environ.get("MAIL_TEST_HASHER_LOG")
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"hash\n")
            finally:
                os.close(fd)
        return super().encode(password, salt, iterations)

"""Failures per client address (failed logins, unknown GET ids), counted in the database so every
listener process and node shares them, and reserved atomically before the work they limit."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum

from mailcore.models import FailureCount

# One count for every login: submission, POP3 and the owner's web sign-in check the same
# passwords, so a guesser locked out of one must not get fresh guesses at the others.
SCOPE = "login-failures"


class AddressCounter:
    """A brake on guessing: at `limit` failures from one address within the window, it is refused.

    `scope` names what is counted (failed logins, unknown GET ids). The count is a database row
    per address and bucket (FailureCount), so a guesser spreading attempts over connections,
    processes or nodes behind one address meets one count, and an increment is atomic (one
    `UPDATE ... SET count = count + 1`): `reserve` counts a failure before the password is
    checked, so that N parallel attempts check at most `limit` passwords, not N.
    The window is kept as fixed buckets of `window` seconds and a failure counts while its
    bucket or the next one is current: a count never drops below the failures of the last
    `window` seconds, and a lockout lasts between one and two windows. Database calls are
    blocking: protocol code calls these through its boundary into worker threads.
    """

    def __init__(self, scope: str, limit: int, window: float, clock: Callable[[], float] = time.time):
        self.scope = scope
        self.limit = limit
        self.window = max(1.0, float(window))
        self.clock = clock  # wall-clock time: every node must agree on the bucket

    def _keys(self, address: str) -> tuple[str, str, float]:
        """(current bucket's key, previous bucket's key, when the current one stops counting)."""
        # Hashed: an IPv6 address or a client-chosen string makes a short, safe key.
        digest = hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:32]
        bucket = int(self.clock() // self.window)
        return f"{self.scope}:{digest}:{bucket}", f"{self.scope}:{digest}:{bucket - 1}", (bucket + 2) * self.window

    def count(self, address: str) -> int:
        current, previous, _ = self._keys(address)
        return FailureCount.objects.filter(key__in=[current, previous]).aggregate(n=Sum("count"))["n"] or 0

    def blocked(self, address: str) -> bool:
        return self.count(address) >= self.limit

    def record(self, address: str) -> int:
        """Count one failure from `address`; returns the count (the current and the previous bucket)."""
        current, _previous, expires = self._keys(address)
        with transaction.atomic():
            self._add(current, 1, expires)
            return self.count(address)

    def reserve(self, address: str) -> str | None:
        """Count a failure before the attempt is judged, if the limit allows one more; None if not.

        Returns the bucket's key, for `release` once the attempt turns out to have succeeded.
        The increment comes first and takes the row's write lock (the database's, on SQLite), so
        parallel reservations are counted one after the other and the limit+1st sees the limit.
        """
        current, _previous, expires = self._keys(address)
        with transaction.atomic():
            self._add(current, 1, expires)
            if self.count(address) > self.limit:
                self._add(current, -1, expires)
                return None
        return current

    def release(self, key: str) -> None:
        """Take back a reservation: the attempt was not a failure."""
        FailureCount.objects.filter(key=key, count__gt=0).update(count=F("count") - 1)

    def _add(self, key: str, delta: int, expires: float) -> None:
        if FailureCount.objects.filter(key=key).update(count=F("count") + delta) or delta < 0:
            return
        expires_at = datetime.fromtimestamp(expires, UTC)
        try:
            with transaction.atomic():
                FailureCount.objects.create(key=key, count=delta, expires_at=expires_at)
        except IntegrityError:  # another process created it meanwhile
            FailureCount.objects.filter(key=key).update(count=F("count") + delta)
            return
        # A new bucket: the ones that stopped counting go (a lookup by the indexed expiry).
        FailureCount.objects.filter(expires_at__lt=datetime.fromtimestamp(self.clock(), UTC)).delete()


class LoginFailures(AddressCounter):
    """Failed logins: one count for submission, POP3 and the web sign-in (see SCOPE)."""

    def __init__(self, limit: int | None = None, window: float | None = None, clock: Callable[[], float] = time.time):
        super().__init__(
            SCOPE,
            settings.MAIL_AUTH_MAX_FAILURES if limit is None else limit,
            settings.MAIL_AUTH_FAILURE_WINDOW if window is None else window,
            clock,
        )

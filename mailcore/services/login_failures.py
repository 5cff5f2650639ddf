"""Failures per client address (failed logins, unknown GET ids), counted in Django's cache so every
listener process and node shares them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import caches

try:  # the Redis cache's errors, when REDIS_URL makes it the cache
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - redis is in requirements.txt
    RedisError = OSError

# One count for every login: submission, POP3 and the owner's web sign-in check the same
# passwords, so a guesser locked out of one must not get fresh guesses at the others.
SCOPE = "login-failures"


class CounterUnavailable(OSError):
    """The shared cache could not be reached: a temporary fault of ours (an OSError, like the store's)."""


class AddressCounter:
    """A brake on guessing: at `limit` failures from one address within the window, it is refused.

    `scope` names what is counted (failed logins, unknown GET ids). The count lives in the
    `default` cache (Redis when REDIS_URL is set, else the database table `mailcore_cache`), so
    a guesser spreading attempts over connections, processes or nodes behind one address meets
    one count. The window is kept as fixed buckets of `window`
    seconds and a failure counts while its bucket or the next one is current: a count never
    drops below the failures of the last `window` seconds, and a lockout lasts between one and
    two windows. Cache operations are blocking: protocol code calls these through its
    boundary into worker threads (the submission handler, the POP3 maildrop).
    """

    def __init__(
        self,
        scope: str,
        limit: int,
        window: float,
        cache_alias: str = "default",
        clock: Callable[[], float] = time.time,
    ):
        self.scope = scope
        self.limit = limit
        self.window = max(1.0, float(window))
        self.cache_alias = cache_alias
        self.clock = clock  # wall-clock time: every node must agree on the bucket

    def _keys(self, address: str) -> tuple[str, str]:
        # Hashed: an IPv6 address or a client-chosen string makes no invalid cache key.
        digest = hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:32]
        bucket = int(self.clock() // self.window)
        return f"{self.scope}:{digest}:{bucket}", f"{self.scope}:{digest}:{bucket - 1}"

    def count(self, address: str) -> int:
        current, previous = self._keys(address)
        try:
            counts = caches[self.cache_alias].get_many([current, previous])
        except RedisError as exc:
            raise CounterUnavailable(str(exc)) from exc
        return sum(int(n) for n in counts.values())

    def blocked(self, address: str) -> bool:
        return self.count(address) >= self.limit

    def record(self, address: str) -> int:
        """Count one failure from `address`; returns the count (the current and the previous bucket)."""
        current, _previous = self._keys(address)
        cache = caches[self.cache_alias]
        # Two windows: the bucket must outlive its own window and the next, in which it still counts.
        ttl = int(self.window * 2) + 1
        try:
            if not cache.add(current, 1, timeout=ttl):
                try:
                    cache.incr(current)  # atomic on Redis; a read and a write on the database cache
                except ValueError:  # expired between add and incr
                    cache.add(current, 1, timeout=ttl)
                # The database cache's incr re-sets the entry with the default timeout.
                cache.touch(current, timeout=ttl)
        except RedisError as exc:
            raise CounterUnavailable(str(exc)) from exc
        return self.count(address)


class LoginFailures(AddressCounter):
    """Failed logins: one count for submission, POP3 and the web sign-in (see SCOPE)."""

    def __init__(
        self,
        limit: int | None = None,
        window: float | None = None,
        cache_alias: str = "default",
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(
            SCOPE,
            settings.MAIL_AUTH_MAX_FAILURES if limit is None else limit,
            settings.MAIL_AUTH_FAILURE_WINDOW if window is None else window,
            cache_alias,
            clock,
        )

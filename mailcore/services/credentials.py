"""A per-process cache of recently verified credentials, so a polling client's logins skip the slow hasher."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

# The HMAC key lives only in this process's memory and is new at every start: an entry's key cannot
# be recomputed, nor a password tested against it, by anyone who reads the cache but not the process
# (Dovecot's auth cache, by contrast, keys on the password's plain hash).
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class _Entry:
    mailbox_id: int
    stored_hash: bytes  # HMAC of the mailbox's password hash as verified, never the hash itself
    expires_at: float  # on the cache's clock, time.monotonic() by default


class VerifiedCredentials:
    """Successful logins of the last `ttl` seconds, at most `size` of them, least recently used out first.

    Only successes are remembered: a wrong password must keep paying the hasher and the failure delay.
    A hit counts only while the mailbox's stored password hash is the one that was verified, so a
    password changed by any process (`manage.py mailbox passwd`, the web console) drops it at once.
    Each process keeps its own entries; a node warms its own cache on the first login of each user.
    """

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.monotonic):
        self._key = key if key is not None else secrets.token_bytes(_KEY_BYTES)
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        # sync_to_async runs services in a pool of worker threads: one lock keeps the order consistent.
        self._lock = threading.Lock()

    def _mac(self, *parts: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            # Length-prefixed, so (address, password) pairs cannot run into each other; surrogatepass
            # because a password taken from the wire may carry undecodable bytes as lone surrogates.
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.digest()

    def recall(self, address: str, password: str, mailbox_id: int, stored_hash: str, ttl: float) -> bool:
        """Whether these credentials were verified against this very password hash less than `ttl` s ago."""
        if ttl <= 0:
            return False
        key = self._mac(address, password)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.expires_at <= now:
                del self._entries[key]
                return False
            if entry.mailbox_id != mailbox_id or not hmac.compare_digest(entry.stored_hash, self._mac(stored_hash)):
                # The password (or the mailbox) changed since: the entry is stale for good.
                del self._entries[key]
                return False
            self._entries.move_to_end(key)
            return True

    def remember(self, address: str, password: str, mailbox_id: int, stored_hash: str, ttl: float, size: int) -> None:
        """Record a successful check; the lifetime is not extended by later hits (Dovecot's auth_cache_ttl)."""
        if ttl <= 0 or size <= 0:
            return
        key = self._mac(address, password)
        entry = _Entry(mailbox_id, self._mac(stored_hash), self._clock() + ttl)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > size:
                self._entries.popitem(last=False)

    def forget_all(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


verified = VerifiedCredentials()


def recall(address: str, password: str, mailbox_id: int, stored_hash: str) -> bool:
    return verified.recall(address, password, mailbox_id, stored_hash, settings.MAIL_AUTH_CACHE_TTL)


def remember(address: str, password: str, mailbox_id: int, stored_hash: str) -> None:
    verified.remember(address, password, mailbox_id, stored_hash,
                      settings.MAIL_AUTH_CACHE_TTL, settings.MAIL_AUTH_CACHE_SIZE)

"""A mailbox as POP3 sees it: the session lock, the listing of its inbox, and the UPDATE state.

The POP3 listener calls these through its DatabaseBridge, each call a unit of work that drops the
connections a failure left unusable before and after it (database_bridge.drop_unusable_connections):
the one place where a long-running listener's connections are looked after."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from mailcore.models import ACTIVE_STATES, Delivery, DeliveryState, MailboxLock, Message
from mailcore.services import accounts, quota
from mailcore.services.login_failures import LoginFailures
from mailcore.store import message_store, segments
from mailcore.store.bodies import CHUNK_SIZE
from mailcore.wire.pop3 import wire_size

log = logging.getLogger("mailcore.pop3")

# Deliveries in these states still need the body (and queue items in ACTIVE_STATES).
LIVE_DELIVERY_STATES = [DeliveryState.INBOX, DeliveryState.QUARANTINED]


@dataclass(frozen=True)
class Account:
    """Who logged in: enough to lock and list the maildrop, and to log the session."""

    mailbox_id: int
    address: str


@dataclass(frozen=True)
class MaildropEntry:
    """One message of the maildrop, fixed for the session (RFC 1939 §5)."""

    delivery_id: int
    message_id: int
    uid: str
    size: int  # octets as sent, without byte-stuffing (RFC 1939 §11)
    body_ref: str


class LockLost(Exception):
    """The session's lock expired and another session took the maildrop: UPDATE must not run."""


def authenticate(address: str, password: str, client: str, failures: LoginFailures) -> Account | None:
    """The account for these credentials, or None; raises LoginBlocked (accounts.login)."""
    mailbox = accounts.login(client, address, password, failures)
    return Account(mailbox.pk, mailbox.address) if mailbox is not None else None


def acquire_lock(mailbox_id: int, holder: str, ttl: float) -> bool:
    """Take the maildrop's lock (RFC 1939 §4) unless a live session holds it; an expired lock lapses."""
    now = timezone.now()
    with transaction.atomic():
        MailboxLock.objects.filter(mailbox_id=mailbox_id, expires_at__lte=now).delete()
        try:
            with transaction.atomic():
                MailboxLock.objects.create(mailbox_id=mailbox_id, holder=holder, expires_at=now + timedelta(seconds=ttl))
        except IntegrityError:  # the one-to-one row exists: another session, on any node, holds it
            return False
    return True


def refresh_lock(mailbox_id: int, holder: str, ttl: float) -> bool:
    """Push the expiry of a lock this session holds; False if it lapsed and is gone."""
    expires_at = timezone.now() + timedelta(seconds=ttl)
    return MailboxLock.objects.filter(mailbox_id=mailbox_id, holder=holder).update(expires_at=expires_at) == 1


def release_lock(mailbox_id: int, holder: str) -> None:
    MailboxLock.objects.filter(mailbox_id=mailbox_id, holder=holder).delete()


def listing(mailbox_id: int) -> list[MaildropEntry]:
    """The inbox of a mailbox in delivery order, from one query; quarantined and deleted mail is not in it.

    A body listed for the first time is read once to count its octets as POP3 sends them, and the
    count is kept on the message (RFC 1939 §11 suggests computing sizes when the maildrop opens).
    """
    rows = list(
        Delivery.objects.filter(mailbox_id=mailbox_id, state=DeliveryState.INBOX)
        .order_by("id")
        .values_list("id", "message_id", "uid", "message__pop3_size", "message__body_ref")
    )
    missing = {message_id: ref for _, message_id, _, size, ref in rows if size is None}
    sizes = _count_sizes(missing) if missing else {}
    return [
        MaildropEntry(delivery_id, message_id, uid, size if size is not None else sizes[message_id], ref)
        for delivery_id, message_id, uid, size, ref in rows
    ]


def _count_sizes(refs: dict[int, str]) -> dict[int, int]:
    store = message_store()
    sizes = {message_id: wire_size(store.iter_chunks(ref)) for message_id, ref in refs.items()}
    Message.objects.bulk_update([Message(pk=pk, pop3_size=size) for pk, size in sizes.items()], ["pop3_size"])
    return sizes


def body_chunks(body_ref: str):
    """The stored body, chunk by chunk (blocking reads: call it off the event loop)."""
    return message_store().iter_chunks(body_ref)


def body_start(body_ref: str, limit: int) -> tuple[bytes, Iterator[bytes] | None]:
    """Open a body and read up to `limit` octets in one call (blocking: call it off the event loop).

    Returns the octets and None when that was the whole body, the file then already closed: a
    typical message costs RETR one trip to a worker thread. A larger body comes back with an
    iterator over the rest, which holds the file open until it is exhausted or closed.
    """
    f = message_store().open(body_ref)
    try:
        first = f.read(limit)  # a buffered read returns short only at the end of the file
        if len(first) < limit:
            f.close()
            return first, None
    except BaseException:
        f.close()
        raise
    return first, _rest(f)


def body_into(body_ref: str, buffer: memoryview, *, wait: bool) -> int | None:
    """Read a whole body into `buffer`, straight from its file; returns its length.

    `buffer` is one octet longer than the body can be (its size as sent: encoding only
    lengthens), so one read finds its end. None when the store keeps no local files, or the
    file is longer than that: read it with `read_body` then.

    With `wait` (in a worker thread) it reads as any read does, and raises what the file system
    raises. Without it, it is safe on the event loop: the read uses RWF_NOWAIT (Linux preadv2),
    which fails at once rather than wait for the disk, and any failure gives None, so that the
    body is read in a worker (which reports the error). Only the open(2) may touch the disk, for
    a cold inode: event-driven servers such as nginx open files on their loop for the same
    reason, a trip to a thread costing more than a read from the page cache.
    """
    global _NO_CACHED_READS
    if not wait and _NO_CACHED_READS:
        return None
    located = _local_path(body_ref)
    if located is None:
        return None
    path, start, length = located
    if length is not None:  # a body in a segment: its length is known, so no read past its end
        if length >= len(buffer):
            return None
        buffer = buffer[:length]
    flags = 0 if wait else os.RWF_NOWAIT
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        if wait:
            raise
        return None
    try:
        read = os.preadv(fd, [buffer], start, flags)
        # A short read is the end of the file, or (without waiting) the end of what the page
        # cache holds: ask once more. A read of the listed size is the whole body (it is never
        # longer as stored than as sent), which spares that second read for most bodies.
        while 0 < read < len(buffer) - (1 if length is None else 0):
            more = os.preadv(fd, [buffer[read:]], start + read, flags)
            if not more:
                break
            read += more
        if length is not None and read < length:
            if wait:
                raise OSError(f"{body_ref}: segment shorter than the body")
            return None
    except OSError as exc:  # BlockingIOError: not all of it is in the page cache
        if wait:
            raise
        if exc.errno == errno.EOPNOTSUPP:  # a file system without RWF_NOWAIT: worker threads only
            _NO_CACHED_READS = True
        return None
    finally:
        os.close(fd)
    if length is not None:
        return read
    return None if read == len(buffer) else read


def read_body(body_ref: str) -> bytes:
    """A whole body through the store (blocking: call it off the event loop)."""
    return message_store().read(body_ref)


def _local_path(body_ref: str) -> tuple[str, int, int | None] | None:
    """(file, offset, length) of the body: a segment's slice, or a whole file (length None, read
    to its end); None when the store keeps no local files (Storage.path says so)."""
    store = message_store()
    root = store.local_root()
    if root is None:
        return None
    if segments.is_segment_ref(body_ref):
        return store.segment_path(body_ref)
    if body_ref.startswith("/") or ".." in body_ref:
        return store.storage.path(body_ref), 0, None  # the storage's own checks, for a name we never make
    # Names are ours (year/month/day/random.eml): a join, without safe_join's cost on every RETR.
    return f"{root}/{body_ref}", 0, None


_NO_CACHED_READS = not hasattr(os, "RWF_NOWAIT")


def _rest(f) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def commit_update(mailbox_id: int, holder: str, deleted: list[int], retrieved: list[int]) -> int:
    """RFC 1939 §6: the deletions marked in a session take effect together, or none does.

    Runs only while the session still holds the lock, so that a session whose lock lapsed cannot
    delete what another session listed since. Bodies no longer needed are released after the
    commit, never before: a crash in between leaves an unreferenced file, never a missing one.
    Returns how many messages were deleted.
    """
    now = timezone.now()
    with transaction.atomic():
        lock = MailboxLock.objects.select_for_update().filter(mailbox_id=mailbox_id, holder=holder).first()
        if lock is None:
            raise LockLost(f"the lock of mailbox {mailbox_id} lapsed")
        inbox = Delivery.objects.filter(mailbox_id=mailbox_id, state=DeliveryState.INBOX)
        if retrieved:
            inbox.filter(pk__in=retrieved, retrieved_at__isnull=True).update(retrieved_at=now)
        doomed = list(inbox.filter(pk__in=deleted).values_list("message_id", "message__size")) if deleted else []
        count = inbox.filter(pk__in=deleted).update(state=DeliveryState.DELETED, changed_at=now) if deleted else 0
        # The space is free once the deletion commits, in the same transaction.
        quota.refund((mailbox_id, size) for _message_id, size in doomed)
        message_ids = [message_id for message_id, _size in doomed]
    if message_ids:
        release_unreferenced_bodies(message_ids)
    return count


def release_unreferenced_bodies(message_ids: list[int]) -> int:
    """Remove from the store the bodies of these messages that no mailbox, queue item or GET serves any more.

    The row keeps its metadata (deleted deliveries still point at it, which keeps their UIDs
    from ever being reused); its empty `body_ref` says the body is gone. Returns how many.
    """
    released: list[str] = []
    with transaction.atomic():
        candidates = (
            Message.objects.select_for_update()
            .filter(pk__in=message_ids)
            .exclude(body_ref="")
            .exclude(deliveries__state__in=LIVE_DELIVERY_STATES)
            .exclude(queue_items__state__in=ACTIVE_STATES)
            .exclude(sourced__expired=False)
        )
        for message in candidates:
            released.append(message.body_ref)
            message.body_ref = ""
            message.save(update_fields=["body_ref"])
    store = message_store()
    for ref in released:
        try:
            store.delete(ref)
        except OSError as exc:  # the rows are committed: a file left behind is a leak, not a loss
            log.warning("could not remove released body %s: %s", ref, exc)
    return len(released)

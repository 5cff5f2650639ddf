"""Garbage collection of the body store: bodies that no Message refers to, and crash leftovers."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import Storage
from django.utils import timezone

from mailcore.models import Message
from mailcore.store import message_store, segments

log = logging.getLogger("mailcore.store.gc")

# The names the store writes: `YYYY/MM/DD/<hex>.eml` (MessageStore._new_name), and the temporary
# name a durable save writes first (DurableFileSystemStorage.TEMP_PREFIX). Anything else in the
# storage is not ours to remove (an S3 bucket may hold other objects).
BODY_SUFFIX = ".eml"
TEMP_PREFIX = ".tmp-"
# Names compared against the Message table per query: bounds memory and the size of the IN list.
BATCH_SIZE = 500


@dataclass
class Collection:
    """What one run found: the names it removed (or would remove, in a dry run) and what it kept."""

    dry_run: bool
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    referenced: int = 0
    fresh: int = 0
    vanished: int = 0

    @property
    def removed(self) -> list[str]:
        return self.orphans + self.temporaries

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {len(self.orphans)} orphaned bodies and {len(self.temporaries)} temporary files; "
            f"kept {self.referenced} referenced and {self.fresh} within the grace period"
        )


def _walk(storage: Storage, directory: str = "") -> Iterator[tuple[str, list[str]]]:
    """(directory, file names) for every directory of the storage, depth first, one listing at a time."""
    try:
        directories, files = storage.listdir(directory)
    except FileNotFoundError:  # the store is empty and was never created
        return
    yield directory, files
    for child in sorted(directories):
        yield from _walk(storage, posixpath.join(directory, child) if directory else child)


def _batches(names: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(names), size):
        yield names[start : start + size]


def _older_than(storage: Storage, name: str, cutoff: datetime) -> bool | None:
    """Whether `name` was last modified before `cutoff`; None when it is gone already."""
    try:
        modified = storage.get_modified_time(name)
    except FileNotFoundError:
        return None
    if timezone.is_naive(modified):
        modified = timezone.make_aware(modified, timezone.get_default_timezone())
    return modified < cutoff


def collect_orphans(*, grace: float | None = None, dry_run: bool = False, batch_size: int = BATCH_SIZE) -> Collection:
    """Remove bodies older than `grace` seconds that no Message refers to, and old `.tmp-` files.

    A crash between a body's fsync and its row's commit (inbound, or `queueing.forward` whose
    copy's row failed) leaves a complete body that nothing refers to. The grace period is what
    keeps a body being written right now safe: its row commits within the same request, long
    before the grace period ends. The database is asked first (one query per batch of names) and
    the storage only about the unreferenced ones, so a referenced body costs no stat (or, on S3,
    no HEAD request).
    """
    grace = settings.MAIL_STORE_GC_GRACE if grace is None else grace
    cutoff = timezone.now() - timedelta(seconds=grace)
    storage = message_store().storage
    result = Collection(dry_run=dry_run)
    for directory, files in _walk(storage):
        bodies = [posixpath.join(directory, f) if directory else f for f in files if f.endswith(BODY_SUFFIX)]
        temporaries = [posixpath.join(directory, f) if directory else f for f in files if f.startswith(TEMP_PREFIX)]
        for name in (posixpath.join(directory, f) if directory else f for f in files if f.endswith(segments.SUFFIX)):
            # A segment holds many bodies: it goes once no message refers to any of them (each
            # deleted body's octets were freed when it was deleted). One being appended to is
            # always fresh: every batch changes its modification time.
            if Message.objects.filter(body_ref__startswith=segments.ref_prefix(name)).exists():
                result.referenced += 1
            else:
                _collect(storage, name, cutoff, result, result.orphans)
        for batch in _batches(bodies, batch_size):
            referenced = set(Message.objects.filter(body_ref__in=batch).values_list("body_ref", flat=True))
            result.referenced += len(referenced)
            for name in batch:
                if name not in referenced:
                    _collect(storage, name, cutoff, result, result.orphans)
        for name in temporaries:
            _collect(storage, name, cutoff, result, result.temporaries)
    log.info("store gc: %s", result.summary())
    return result


def _collect(storage: Storage, name: str, cutoff: datetime, result: Collection, into: list[str]) -> None:
    old = _older_than(storage, name, cutoff)
    if old is None:
        result.vanished += 1
        return
    if not old:
        result.fresh += 1
        return
    if not result.dry_run:
        try:
            storage.delete(name)
        except FileNotFoundError:  # removed since we looked (another run, a release)
            result.vanished += 1
            return
        log.info("store gc: removed %s", name)
    into.append(name)

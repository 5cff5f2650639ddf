"""The message store's interface over Django's storage API (the `mailbodies` storage)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import secrets
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages
from django.utils import timezone

from mailcore.store import segments
from mailcore.store.spool import SpoolFile, octets, size_of

CHUNK_SIZE = 64 * 1024
# A body to store: bytes, or a sequence of chunks stored as their concatenation, in which a
# large message's octets past its first part may be a SpoolFile (store.spool), copied from there
# in the kernel and never read into memory whole. The caller keeps the spool open until the
# call returns (for `begin_put_many`, until `wait` or `settle` has), and closes it.
Body = bytes | Sequence[bytes | SpoolFile]


@dataclass(frozen=True)
class StoredBody:
    ref: str
    size: int
    sha256: str


class PendingBodies:
    """Stored bodies whose refs are final, and that are durable once `wait` has returned."""

    def __init__(self, bodies: list[StoredBody], durable: Future | None = None):
        self.bodies = bodies
        self._durable = durable

    def wait(self) -> None:
        """Return once every body is on stable storage; raise what writing or syncing raised."""
        if self._durable is not None:
            self._durable.result()

    def settle(self) -> None:
        """Wait for the writes to be over, whether or not they succeeded."""
        if self._durable is not None:
            concurrent.futures.wait([self._durable])


class _ChunkFile(File):
    """Feeds an iterable of byte chunks to a storage backend without joining them in memory.

    A backend that calls `chunks()` gets them as they are; one that calls `read(size)` (an
    upload in parts) gets `size` octets at a time. Either way each chunk is hashed once.
    """

    def __init__(self, chunks: Iterable[bytes]):
        super().__init__(None, name="body")
        self._chunks = chunks
        self._unread = iter(self.chunks())
        self._held = bytearray()  # read from the chunks, not yet returned (a del at its front is cheap)
        self.digest = hashlib.sha256()
        self.size_written = 0

    def chunks(self, chunk_size=None) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size_written += len(chunk)
            yield chunk

    def read(self, size=-1) -> bytes:
        if size is None or size < 0:
            data = bytes(self._held) + b"".join(self._unread)
            self._held.clear()
            return data
        while len(self._held) < size:
            chunk = next(self._unread, None)
            if chunk is None:
                break
            self._held += chunk
        data = bytes(self._held[:size])
        del self._held[:size]
        return data

    @property
    def size(self) -> int:
        return self.size_written


class MessageStore:
    """put / open / delete of message bodies; a body is immutable once stored."""

    def __init__(self, storage: Storage, segment_max: int = 0):
        self.storage = storage
        # Bodies up to this many octets go to segment files (segments.py) when the storage is a
        # local file system; 0, or a storage without local paths (S3), stores each in its own.
        self.segment_max = segment_max

    @staticmethod
    def _new_name() -> str:
        return f"{timezone.now():%Y/%m/%d}/{secrets.token_hex(16)}.eml"

    def put(self, data: bytes | Iterable[bytes | SpoolFile]) -> StoredBody:
        """Store a body; returns once it is durable. The name is fresh, never reused.

        A body in chunks (a SpoolFile among them read a chunk at a time) goes to the storage as
        a file whose `chunks()` yields them: a storage without local paths (S3) uploads it so."""
        name = self._new_name()
        if isinstance(data, (bytes, bytearray, memoryview)):
            content = ContentFile(bytes(data))
            saved = self.storage.save(name, content)
            return StoredBody(saved, len(data), hashlib.sha256(data).hexdigest())
        stream = _ChunkFile(octets(data))
        saved = self.storage.save(name, stream)
        return StoredBody(saved, stream.size_written, stream.digest.hexdigest())

    def put_many(self, bodies: list[Body]) -> list[StoredBody]:
        """Store several bodies; returns once all are durable, or raises having kept none.

        A body may be given as a sequence of chunks, stored as their concatenation (`Body`): the
        inbound path hands over its trace headers and the message as received without joining
        them (a copy of the whole message), a large message's spool last. A storage with `save_many` (the durable file system)
        makes them durable in one round of fsyncs, which is what lets a group commit acknowledge
        many messages for the price of one.
        """
        pending = self.begin_put_many(bodies)
        try:
            pending.wait()
        except BaseException:
            self.discard(pending)
            raise
        return pending.bodies

    def begin_put_many(self, bodies: list[Body], sync_here: bool = False) -> PendingBodies:
        """`put_many`, returning as soon as the refs are known: `wait()` on the result returns
        once every body is durable. Bodies that go to a segment are written and synced in
        another thread meanwhile, so a caller can write the rows that name them at the same
        time, and commit those only after `wait()`; any other body is durable on return.
        With `sync_here`, segment bodies too are written and synced in this thread, durable on
        return (`wait()` then only reports how their write went): for a caller with nothing to do
        meanwhile, the trip to the sync thread and back costs more than the overlap gains.
        """
        writer = self._segment_writer()
        small = [i for i, body in enumerate(bodies) if size_of(body) <= self.segment_max] if writer is not None else []
        if not small:
            return PendingBodies(self._put_each_in_a_file(bodies))
        chosen = set(small)
        large = [i for i in range(len(bodies)) if i not in chosen]
        stored: dict[int, StoredBody] = {}
        if large:
            stored.update(zip(large, self._put_each_in_a_file([bodies[i] for i in large]), strict=True))
        try:
            refs, durable = writer.begin_append([_chunks(bodies[i]) for i in small], here=sync_here)
        except BaseException:
            for body in stored.values():
                self.delete(body.ref)
            raise
        stored.update((i, _described(ref, bodies[i])) for i, ref in zip(small, refs, strict=True))
        return PendingBodies([stored[i] for i in range(len(bodies))], durable)

    def discard(self, pending: PendingBodies) -> None:
        """Remove bodies whose messages were not recorded, once their writes are over."""
        pending.settle()
        for body in pending.bodies:
            self.delete(body.ref)

    def _put_each_in_a_file(self, bodies: list[Body]) -> list[StoredBody]:
        save_many = getattr(self.storage, "save_many", None)
        if save_many is None:
            stored: list[StoredBody] = []
            try:
                for body in bodies:
                    stored.append(self.put(body))
            except BaseException:
                for body in stored:
                    self.delete(body.ref)
                raise
            return stored
        names = save_many([self._new_name() for _ in bodies], bodies)
        return [_described(name, body) for name, body in zip(names, bodies, strict=True)]

    def _segment_writer(self) -> segments.SegmentWriter | None:
        if self.segment_max <= 0:
            return None
        root = self.local_root()
        if root is None:
            return None
        key = (os.getpid(), root)  # a forked listener process appends to segments of its own
        writer = _SEGMENT_WRITERS.get(key)
        if writer is None:
            # Idle segments are left well within the collector's grace period (segments.py).
            idle = max(0.0, min(60.0, settings.MAIL_STORE_GC_GRACE / 4))
            writer = _SEGMENT_WRITERS.setdefault(key, segments.SegmentWriter(root, idle_limit=idle))
        return writer

    def local_root(self) -> str | None:
        """The directory of a storage on the local file system; None for one without paths (S3)."""
        root = _ROOTS.get(self.storage)
        if root is None:
            try:
                root = self.storage.path("")
            except NotImplementedError:
                root = ""
            _ROOTS[self.storage] = root
        return root or None

    def spool_directory(self) -> str | None:
        """Where a large message being received is spooled (store.spool): the store's own
        directory on the local file system, so that it is copied in within the kernel; None,
        the system's temporary directory, for a storage without local paths (S3)."""
        return self.local_root()

    def segment_path(self, ref: str) -> tuple[str, int, int] | None:
        """(file path, offset, length) of a body kept in a segment; None for a body in a file of its own."""
        if not segments.is_segment_ref(ref):
            return None
        name, offset, length = segments.parse(ref)
        root = self.local_root()
        if root is None:
            raise FileNotFoundError(f"{ref}: segments need a storage on the local file system")
        return os.path.join(root, name), offset, length

    def open(self, ref: str) -> BinaryIO:
        located = self.segment_path(ref)
        if located is not None:
            return segments.open_body(*located)
        return self.storage.open(ref, "rb")

    def read(self, ref: str) -> bytes:
        with self.open(ref) as f:
            return f.read()

    def iter_chunks(self, ref: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(ref) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, ref: str) -> None:
        located = self.segment_path(ref)
        if located is not None:
            segments.punch_hole(*located)
            return
        self.storage.delete(ref)

    def exists(self, ref: str) -> bool:
        located = self.segment_path(ref)
        if located is not None:
            return segments.holds_body(*located)
        return self.storage.exists(ref)


_SEGMENT_WRITERS: dict[tuple[int, str], segments.SegmentWriter] = {}
# Each storage's local root, asked once (it is asked again for every POP3 RETR).
_ROOTS: weakref.WeakKeyDictionary[Storage, str] = weakref.WeakKeyDictionary()


def _chunks(body: Body) -> Sequence[bytes | SpoolFile]:
    return [body] if isinstance(body, (bytes, bytearray, memoryview)) else body


def _described(name: str, body: Body) -> StoredBody:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return StoredBody(name, len(body), hashlib.sha256(body).hexdigest())
    digest = hashlib.sha256()
    for chunk in octets(body):
        digest.update(chunk)
    return StoredBody(name, size_of(body), digest.hexdigest())


def message_store() -> MessageStore:
    return MessageStore(storages["mailbodies"], settings.MAIL_STORE_SEGMENT_MAX)

"""The message store's interface over Django's storage API (the `mailbodies` storage)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages
from django.utils import timezone

CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class StoredBody:
    ref: str
    size: int
    sha256: str


class _ChunkFile(File):
    """Feeds an iterable of byte chunks to a storage backend without joining them in memory."""

    def __init__(self, chunks: Iterable[bytes]):
        super().__init__(None, name="body")
        self._chunks = chunks
        self.digest = hashlib.sha256()
        self.size_written = 0

    def chunks(self, chunk_size=None) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size_written += len(chunk)
            yield chunk

    def read(self, size=-1) -> bytes:  # for backends that read() instead of chunks()
        return b"".join(self.chunks())

    @property
    def size(self) -> int:
        return self.size_written


class MessageStore:
    """put / open / delete of message bodies; a body is immutable once stored."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @staticmethod
    def _new_name() -> str:
        return f"{timezone.now():%Y/%m/%d}/{secrets.token_hex(16)}.eml"

    def put(self, data: bytes | Iterable[bytes]) -> StoredBody:
        """Store a body; returns once it is durable. The name is fresh, never reused."""
        name = self._new_name()
        if isinstance(data, (bytes, bytearray, memoryview)):
            content = ContentFile(bytes(data))
            saved = self.storage.save(name, content)
            return StoredBody(saved, len(data), hashlib.sha256(data).hexdigest())
        stream = _ChunkFile(data)
        saved = self.storage.save(name, stream)
        return StoredBody(saved, stream.size_written, stream.digest.hexdigest())

    def put_many(self, bodies: list[bytes | Sequence[bytes]]) -> list[StoredBody]:
        """Store several bodies; returns once all are durable, or raises having kept none.

        A body may be given as a sequence of chunks, stored as their concatenation: the inbound
        path hands over its trace headers and the message as received without joining them
        (a copy of the whole message). A storage with `save_many` (the durable file system)
        makes them durable in one round of fsyncs, which is what lets a group commit acknowledge
        many messages for the price of one.
        """
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

    def open(self, ref: str) -> BinaryIO:
        return self.storage.open(ref, "rb")

    def read(self, ref: str) -> bytes:
        with self.open(ref) as f:
            return f.read()

    def iter_chunks(self, ref: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(ref) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, ref: str) -> None:
        self.storage.delete(ref)

    def exists(self, ref: str) -> bool:
        return self.storage.exists(ref)


def _described(name: str, body: bytes | Sequence[bytes]) -> StoredBody:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return StoredBody(name, len(body), hashlib.sha256(body).hexdigest())
    digest = hashlib.sha256()
    for chunk in body:
        digest.update(chunk)
    return StoredBody(name, sum(len(chunk) for chunk in body), digest.hexdigest())


def message_store() -> MessageStore:
    return MessageStore(storages["mailbodies"])

"""Message bodies in an S3-compatible object store, on django-storages' S3Storage.

Each body is one object, written with a single PUT: S3 answers 200 only once the object is
stored durably (read-after-write consistent), so `save` returning is the durable point that the
acknowledgement waits for. A body is read as a stream (the GET response's body, chunk by
chunk), never downloaded whole. Every failure of the store, including a timeout, comes out as
an OSError (FileNotFoundError for a missing object), the error the listeners already answer
with a 4xx: botocore's own exceptions are not OSErrors.
"""

from __future__ import annotations

import contextlib
import mimetypes
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import File
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

# PUTs of one group commit go out at once: an object store's latency is per request, not per byte.
PUT_CONCURRENCY = 16
_PUT_THREADS = ThreadPoolExecutor(max_workers=PUT_CONCURRENCY, thread_name_prefix="store-put")
_MISSING = {"404", "NoSuchKey", "NotFound"}


@contextlib.contextmanager
def object_store_errors(name: str) -> Iterator[None]:
    """botocore's errors as the OSErrors that callers of a storage handle."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING or status == 404:
            raise FileNotFoundError(f"{name}: no such object in the body store") from exc
        raise OSError(f"{name}: the body store refused: {exc}") from exc
    except BotoCoreError as exc:  # connection refused, timeouts, an endpoint that is not S3
        raise OSError(f"{name}: the body store is unreachable: {exc}") from exc


class ObjectBody(File):
    """An object's GET response, read in the caller's chunk sizes as it arrives."""

    def __init__(self, name: str, response: dict):
        self._stream = response["Body"]
        super().__init__(self._stream, name=name)
        self._size = response.get("ContentLength")

    @property
    def size(self) -> int | None:
        return self._size

    def read(self, size: int = -1) -> bytes:
        """Up to `size` octets; fewer only at the end of the object, as a buffered file reads."""
        with object_store_errors(self.name):
            if size is None or size < 0:
                return self._stream.read()
            parts: list[bytes] = []
            wanted = size
            while wanted > 0:
                part = self._stream.read(wanted)
                if not part:
                    break
                parts.append(part)
                wanted -= len(part)
            return b"".join(parts)

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        while chunk := self.read(chunk_size or self.DEFAULT_CHUNK_SIZE):
            yield chunk

    @property
    def closed(self) -> bool:
        return self._stream is None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # returns the connection, or drops it when the body was not read to its end
            self._stream = None


class ObjectStoreBodies(S3Storage):
    """S3Storage for message bodies: bounded waits, streaming reads, OSErrors, group PUTs.

    Options beyond S3Storage's own: `timeout` (seconds to connect, and to wait for each read of
    a response) and `max_attempts` (tries of one request, the first included), so that a dead or
    hung endpoint costs a message a bounded wait and a 451, never a listener held for minutes.
    """

    def __init__(self, **options):
        timeout = float(options.pop("timeout", 10.0))
        attempts = int(options.pop("max_attempts", 3))
        options.setdefault("file_overwrite", True)  # names are fresh and random: no HEAD before a PUT
        options.setdefault("location", "")
        if options.get("client_config") is None:
            options["client_config"] = Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                max_pool_connections=PUT_CONCURRENCY + 16,  # and the listeners' reads besides
                s3={"addressing_style": options.get("addressing_style") or "auto"},
                signature_version=options.get("signature_version"),
                proxies=options.get("proxies"),
            )
        super().__init__(**options)

    def _key(self, name: str) -> str:
        return self._normalize_name(clean_name(name))

    def _put(self, name: str, content: bytes | Sequence[bytes]) -> str:
        """One PUT of the whole body; returns once the store has answered that it holds it."""
        body = content if isinstance(content, (bytes, bytearray, memoryview)) else b"".join(content)
        with object_store_errors(name):
            self.bucket.Object(self._key(name)).put(
                Body=bytes(body), ContentType=mimetypes.guess_type(name)[0] or "message/rfc822", **self.get_object_parameters(name)
            )
        return clean_name(name)

    def _save(self, name: str, content) -> str:
        chunks = content.chunks() if hasattr(content, "chunks") else [content.read()]
        return self._put(name, [chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks])

    def save_many(self, names: list[str], contents: list[bytes | Sequence[bytes]]) -> list[str]:
        """PUT several new bodies at once; all are stored on return, or none is and it raises."""
        futures = [_PUT_THREADS.submit(self._put, name, content) for name, content in zip(names, contents, strict=True)]
        saved, failure = [], None
        for future in futures:
            try:
                saved.append(future.result())
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            for name in saved:
                with contextlib.suppress(OSError):
                    self.delete(name)
            raise failure
        return saved

    def _open(self, name: str, mode: str = "rb"):
        if mode != "rb":
            return super()._open(name, mode)
        with object_store_errors(name):
            response = self.bucket.Object(self._key(name)).get()
        return ObjectBody(name, response)

    def delete(self, name: str) -> None:
        with object_store_errors(name):
            super().delete(name)

    def exists(self, name: str) -> bool:
        with object_store_errors(name):
            return super().exists(name)

    def listdir(self, name: str):
        with object_store_errors(name):
            return super().listdir(name)

    def size(self, name: str) -> int:
        with object_store_errors(name):
            return super().size(name)

    def get_modified_time(self, name: str):
        with object_store_errors(name):
            return super().get_modified_time(name)

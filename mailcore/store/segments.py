"""Segment files: many received bodies appended to one file, made durable by one fdatasync a batch.

A body in a file of its own costs a new inode, an fsync of the file and one of its directory
before the message may be acknowledged; on the machines we measured, creating the file alone
(ext4 searching its inode tables) cost more than the fsync. Dovecot's mdbox keeps many messages
per file for the same reason. A process appends the bodies of a group commit to its current
segment with one pwritev(2) and one fdatasync(2) (which also makes the new length durable); a
segment's name is made durable once, when it is created.

A body's ref is `seg:<segment>:<offset>:<length>`, the segment named relative to the store's
root. A deleted body's octets are freed with fallocate(2)'s PUNCH_HOLE, which leaves zeros: a
stored body is never zeros (it starts with our trace headers), which is how `exists` tells. A
segment that no message refers to any more is removed by the store's garbage collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from django.utils import timezone

from mailcore.store.backends import fsync_directory, write_chunks

SEGMENT_PREFIX = "seg:"
DIRECTORY = "segments"
SUFFIX = ".seg"
# A segment is closed to appends at this size (or when the day changes): large enough that
# creating one is rare, small enough that one long-kept message pins little space.
SEGMENT_SIZE = 64 * 1024 * 1024


def is_segment_ref(ref: str) -> bool:
    return ref.startswith(SEGMENT_PREFIX)


def parse(ref: str) -> tuple[str, int, int]:
    """(segment name, offset, length) of a segment ref; ValueError for anything else."""
    if not ref.startswith(SEGMENT_PREFIX):
        raise ValueError(f"not a segment ref: {ref!r}")
    name, offset, length = ref[len(SEGMENT_PREFIX):].rsplit(":", 2)
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"not a segment ref: {ref!r}")
    return name, int(offset), int(length)


def ref_prefix(name: str) -> str:
    """What the refs of every body in the segment `name` start with."""
    return f"{SEGMENT_PREFIX}{name}:"


def make_ref(name: str, offset: int, length: int) -> str:
    return f"{ref_prefix(name)}{offset}:{length}"


class _Segment:
    """One open segment: where the next body goes, and how many writers still use its descriptor."""

    __slots__ = ("fd", "last_append", "name", "retired", "size", "users")

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        self.size = 0
        self.users = 0
        self.retired = False
        self.last_append = time.monotonic()


class SegmentWriter:
    """The segment this process appends to; thread-safe, one per process (a fork starts its own)."""

    def __init__(self, root: str, segment_size: int = SEGMENT_SIZE, idle_limit: float = 60.0):
        self.root = root
        self.segment_size = segment_size
        # The garbage collector removes a segment that no message refers to once it has not
        # changed for its grace period; one left idle this long is never appended to again, so
        # that a body is never written to a file being removed. It must be under that grace.
        self.idle_limit = idle_limit
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._day = ""

    def begin_append(self, bodies: Sequence[Sequence[bytes]], here: bool = False) -> tuple[list[str], Future]:
        """Reserve space for each body and start writing and syncing them in another thread.

        Returns the refs at once, and a future that is done once all are durable (or failed):
        the caller may write the rows that name them meanwhile, and must commit those only once
        the future has succeeded. Space is reserved under a lock and written outside it, so two
        batches of one process write and sync at once; each syncs after its own write, so it
        never answers for the other's. A failed write or sync retires the segment (after a
        failed fsync the kernel may have dropped the pages: nothing more is trusted to that file).

        `here`: written and synced in the calling thread instead, before this returns (the
        future is then done), for a caller with nothing to overlap them with (a lone batch).
        """
        lengths = [sum(len(chunk) for chunk in body) for body in bodies]
        total = sum(lengths)
        with self._lock:
            segment = self._segment_for(total)
            start = segment.size
            segment.size += total
            segment.users += 1
        chunks = [chunk for body in bodies for chunk in body if chunk]
        if here:
            durable = _outcome(self._write, segment, chunks, start)
        else:
            try:
                durable = _sync_threads().submit(self._write, segment, chunks, start)
            except BaseException:
                self._release(segment, failed=True)
                raise
        refs, offset = [], start
        for length in lengths:
            refs.append(make_ref(segment.name, offset, length))
            offset += length
        return refs, durable

    def _write(self, segment: _Segment, chunks: list[bytes], start: int) -> None:
        failed = True
        try:
            write_chunks(segment.fd, chunks, start)
            os.fdatasync(segment.fd)
            failed = False
        finally:
            self._release(segment, failed)

    def _release(self, segment: _Segment, failed: bool) -> None:
        with self._lock:
            if failed:
                segment.retired = True
            segment.users -= 1
            self._close_if_done(segment)

    def _segment_for(self, size: int) -> _Segment:
        today = timezone.now().strftime("%Y/%m/%d")
        current = self._current
        now = time.monotonic()
        if (
            current is None
            or current.retired
            or current.size + size > self.segment_size and current.size
            or today != self._day
            or now - current.last_append > self.idle_limit
        ):
            if current is not None:
                current.retired = True
                self._close_if_done(current)
            self._current = current = self._create(today)
            self._day = today
        current.last_append = now
        return current

    def _create(self, day: str) -> _Segment:
        directory = os.path.join(self.root, DIRECTORY, day)
        _make_durable_directories(self.root, os.path.join(DIRECTORY, day))
        name = f"{DIRECTORY}/{day}/{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"
        fd = os.open(os.path.join(self.root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            fsync_directory(directory)  # the name is durable before any body in it is acknowledged
        except BaseException:
            os.close(fd)
            raise
        return _Segment(fd, name)

    def _close_if_done(self, segment: _Segment) -> None:
        if segment.retired and segment.users == 0 and segment.fd >= 0:
            os.close(segment.fd)
            segment.fd = -1
            if self._current is segment:
                self._current = None


def _outcome(fn: Callable[..., None], *args) -> Future:
    """`fn(*args)` run now, its outcome a done future, as a sync thread would have left it."""
    future: Future = Future()
    try:
        fn(*args)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(None)
    return future


_SYNC_THREADS: tuple[int, ThreadPoolExecutor] | None = None


def _sync_threads() -> ThreadPoolExecutor:
    """The threads that write and sync segments, this process's own (a fork starts its own)."""
    global _SYNC_THREADS
    if _SYNC_THREADS is None or _SYNC_THREADS[0] != os.getpid():
        _SYNC_THREADS = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="segment-sync"))
    return _SYNC_THREADS[1]


def _make_durable_directories(root: str, relative: str) -> None:
    """Create each missing directory of `relative` under `root`, its parent synced after each."""
    path = root
    os.makedirs(root, exist_ok=True)
    for part in relative.split("/"):
        parent, path = path, os.path.join(path, part)
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            fsync_directory(parent)


class SegmentSlice(io.RawIOBase):
    """One body of a segment as a read-only file (positioned reads: no shared file offset)."""

    def __init__(self, path: str, offset: int, length: int):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._start, self._length, self._position = offset, length, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        read = os.preadv(self._fd, [memoryview(buffer)[:wanted]], self._start + self._position)
        if read == 0:
            raise OSError(f"segment shorter than its ref: {self._length - self._position} octets missing")
        self._position += read
        return read

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_body(path: str, offset: int, length: int) -> io.BufferedReader:
    return io.BufferedReader(SegmentSlice(path, offset, length))


def holds_body(path: str, offset: int, length: int) -> bool:
    """Whether the body is there: its segment exists and its first octets are not a punched hole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        head = os.pread(fd, min(length, 64), offset)
    finally:
        os.close(fd)
    return len(head) == min(length, 64) and head.strip(b"\0") != b""


# fallocate(2) is not in the os module; its flags are from <linux/falloc.h>.
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def punch_hole(path: str, offset: int, length: int) -> None:
    """Free a deleted body's octets (zeros read back); a file system without holes keeps them."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fallocate = getattr(_libc, "fallocate", None)
        if fallocate is None:
            raise OSError("no fallocate")
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            raise OSError(ctypes.get_errno(), "fallocate")
    except OSError:
        # No hole punching here: write the zeros ourselves, so that `holds_body` still tells.
        os.pwrite(fd, bytes(min(length, 64)), offset)
    finally:
        os.close(fd)

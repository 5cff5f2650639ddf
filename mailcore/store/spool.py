"""The spool: the part of a large message that is not held in memory while it is received.

A message larger than the DATA reader keeps in memory (wire.data.PART_SIZE) is handed on as its
first part (bytes, holding the whole header block) and a `SpoolFile` with the rest. The store
copies a spool into the body's file or segment in the kernel (copy_file_range(2)) and fsyncs
it there with the rest of its group commit, so the spool itself never needs a sync of its own.

A spool is an unnamed temporary file (O_TMPFILE where the file system has it, else a name that
is unlinked at once), in the store's own directory when the store is on the local file system:
it takes the disk the body will take, and a copy on the same file system stays in the kernel.
Its space is freed when it is closed, and when the process ends, a crash included: nothing is
left behind for `clean_temporary` to find.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

CHUNK_SIZE = 1024 * 1024
PREFIX = ".tmp-spool-"
# copy_file_range(2) refuses some pairs of files (across file systems before Linux 5.3 and again
# after 5.19, on some network and special file systems): those are copied by reads and writes.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class SpoolFile:
    """The octets of a message past its first part: appended while they arrive, then read by position.

    Reads never move a shared file offset (pread, copy_file_range with offsets), so a batch that
    is retried reads the same octets again. `len()` is the number of octets spooled.
    """

    def __init__(self, directory: str | None = None):
        if directory is not None:
            os.makedirs(directory, exist_ok=True)  # a store that has no body yet has no directory yet
        self._file = tempfile.TemporaryFile(prefix=PREFIX, dir=directory)
        self.fd = self._file.fileno()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<SpoolFile {self.size} octets{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._file.closed

    def append(self, *pieces: bytes | bytearray | memoryview) -> None:
        """Write `pieces` at the end, in one writev(2) where the kernel takes them whole."""
        views = [memoryview(piece) for piece in pieces if len(piece)]
        while views:
            written = os.pwritev(self.fd, views, self.size)
            self.size += written
            while views and written >= views[0].nbytes:
                written -= views.pop(0).nbytes
            if written:
                views[0] = views[0][written:]

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The spooled octets, in order, `chunk_size` at a time."""
        offset = 0
        while offset < self.size:
            chunk = os.pread(self.fd, min(chunk_size, self.size - offset), offset)
            if not chunk:
                raise OSError(f"spool shorter than written: {self.size - offset} octets missing")
            offset += len(chunk)
            yield chunk

    def read(self) -> bytes:
        """All the spooled octets as one bytes object: only for a reader bounded by a size limit."""
        return b"".join(self.chunks())

    def copy_into(self, fd: int, offset: int | None = None) -> None:
        """Write every spooled octet to `fd`, at `offset` or else at its file position.

        In the kernel where it can (copy_file_range(2): no copy through this process, and on
        file systems that share extents, no copy at all); by reads and writes where it cannot.
        """
        done = 0
        while done < self.size:
            try:
                copied = os.copy_file_range(self.fd, fd, self.size - done, done, None if offset is None else offset + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self._copy_by_reading(fd, offset, done)
                return
            if copied == 0:
                raise OSError(f"spool shorter than written: {self.size - done} octets missing")
            done += copied

    def _copy_by_reading(self, fd: int, offset: int | None, done: int) -> None:
        while done < self.size:
            chunk = os.pread(self.fd, min(CHUNK_SIZE, self.size - done), done)
            if not chunk:
                raise OSError(f"spool shorter than written: {self.size - done} octets missing")
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset + done)
                view, done = view[written:], done + written

    def close(self) -> None:
        """Free the spool's space; reading it afterwards fails. Closing twice is harmless."""
        self._file.close()


def octets(parts) -> Iterator[bytes]:
    """Every octet of a body given as bytes or as a sequence of bytes and SpoolFiles, in chunks."""
    if isinstance(parts, (bytes, bytearray, memoryview)):
        yield parts
        return
    for part in parts:
        if isinstance(part, SpoolFile):
            yield from part.chunks()
        elif part:
            yield part


def joined(content) -> bytes:
    """A message as one bytes object, its spool read whole: only for a reader bounded by a size limit."""
    if isinstance(content, (bytes, bytearray)):
        return content
    return b"".join(part.read() if isinstance(part, SpoolFile) else part for part in content)


def size_of(content) -> int:
    """The octets of a message given as bytes or as parts (a SpoolFile's length is what it holds)."""
    return len(content) if isinstance(content, (bytes, bytearray, memoryview)) else sum(map(len, content))


def is_spooled(content) -> bool:
    """Whether part of a message is in a spool file rather than in memory."""
    return isinstance(content, list) and any(isinstance(part, SpoolFile) for part in content)


def release(content) -> None:
    """Close the spool of a message, if it has one: for its owner, once nobody reads it any more."""
    if isinstance(content, list):
        for part in content:
            if isinstance(part, SpoolFile):
                part.close()

"""A file-system storage that makes every saved file durable before `save` returns."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from django.core.files.storage import FileSystemStorage

from mailcore.store.spool import SpoolFile

# fsync(2) of many files issued at once lets the file system write them in one journal commit
# (ext4's jbd2 joins concurrent fsyncs): a batch of 32 bodies costs about what 4 cost one by one.
_FSYNC_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="store-fsync")
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def write_chunks(fd: int, chunks: Sequence[bytes | SpoolFile], offset: int | None = None) -> None:
    """Write every chunk, in order, with as few writev(2) calls as the kernel allows; from
    `offset` with pwritev(2) when given (the file's own position is then left alone).

    A chunk may be a SpoolFile (a large message's octets past its first part): it is copied in
    the kernel (SpoolFile.copy_into), never read into this process whole."""
    views: list[memoryview] = []
    for chunk in chunks:
        if isinstance(chunk, SpoolFile):
            offset = _write_views(fd, views, offset)
            views = []
            chunk.copy_into(fd, offset)
            if offset is not None:
                offset += len(chunk)
        elif chunk:
            views.append(memoryview(chunk))
    _write_views(fd, views, offset)


def _write_views(fd: int, views: list[memoryview], offset: int | None) -> int | None:
    """writev(2) or pwritev(2) of `views` (consumed); returns the offset after them, if one was given."""
    while views:
        if offset is None:
            written = os.writev(fd, views[:_IOV_MAX])
        else:
            written = os.pwritev(fd, views[:_IOV_MAX], offset)
            offset += written
        while views and written >= views[0].nbytes:  # a short write (signal, full disk) resumes here
            written -= views.pop(0).nbytes
        if written:
            views[0] = views[0][written:]
    return offset


def fsync_directory(path: str) -> None:
    """A rename is durable only once the directory that holds it is synced (POSIX rename(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableFileSystemStorage(FileSystemStorage):
    """Write to a temporary name, fsync the file, rename it into place, fsync the directory.

    A crash leaves either the complete file or only a `.tmp-` file, which `clean_temporary`
    removes; a reader never sees half a body.
    """

    TEMP_PREFIX = ".tmp-"

    def _save(self, name: str, content) -> str:
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        created = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        if created:
            fsync_directory(os.path.dirname(directory))
        temp_path = os.path.join(directory, f"{self.TEMP_PREFIX}{secrets.token_hex(8)}")
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as f:
                if hasattr(content, "chunks"):
                    for chunk in content.chunks():
                        f.write(chunk)
                else:
                    f.write(content.read())
                f.flush()
                os.fsync(f.fileno())
            # The name is random and fresh, so os.replace never overwrites another body.
            os.replace(temp_path, full_path)
        except BaseException:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass
            raise
        fsync_directory(directory)
        return name

    def save_many(self, names: list[str], contents: list[bytes | Sequence[bytes | SpoolFile]]) -> list[str]:
        """Save several new files in one durability round (group commit); all or none.

        Each is written to a temporary name, all are fsynced together, renamed into place, and
        each directory that holds them is fsynced once. `names` must be fresh (never overwritten).
        A content may be a sequence of chunks (our headers, then the message as received, its
        spool last): they are written with one writev(2), the spool copied in the kernel, rather
        than joined into a copy first.
        """
        temps: list[tuple[str, str]] = []  # (temporary, final) paths
        open_fds: list[int] = []
        placed: set[str] = set()
        directories: set[str] = set()
        try:
            for name, content in zip(names, contents, strict=True):
                full_path = self.path(name)
                directory = os.path.dirname(full_path)
                if directory not in directories and not os.path.isdir(directory):
                    os.makedirs(directory, exist_ok=True)
                    fsync_directory(os.path.dirname(directory))
                directories.add(directory)
                temp_path = os.path.join(directory, f"{self.TEMP_PREFIX}{secrets.token_hex(8)}")
                fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                open_fds.append(fd)
                temps.append((temp_path, full_path))
                write_chunks(fd, [content] if isinstance(content, (bytes, bytearray, memoryview)) else content)
            if len(open_fds) == 1:
                os.fsync(open_fds[0])  # nothing to overlap with: spare the hop to another thread
            else:
                for _ in _FSYNC_THREADS.map(os.fsync, open_fds):
                    pass
            while open_fds:
                os.close(open_fds.pop())
            for temp_path, full_path in temps:
                os.replace(temp_path, full_path)
                placed.add(full_path)
            for directory in directories:
                fsync_directory(directory)
        except BaseException:
            for fd in open_fds:
                os.close(fd)
            for temp_path, full_path in temps:
                for path in (temp_path, full_path) if full_path in placed else (temp_path,):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            raise
        return list(names)

    def clean_temporary(self) -> int:
        """Remove temporary files that a crash left behind; returns how many."""
        removed = 0
        for root, _dirs, files in os.walk(self.location):
            for filename in files:
                if filename.startswith(self.TEMP_PREFIX):
                    os.unlink(os.path.join(root, filename))
                    removed += 1
        return removed

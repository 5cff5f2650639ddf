"""A file-system storage that makes every saved file durable before `save` returns."""

from __future__ import annotations

import os
import secrets

from django.core.files.storage import FileSystemStorage


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

    def clean_temporary(self) -> int:
        """Remove temporary files that a crash left behind; returns how many."""
        removed = 0
        for root, _dirs, files in os.walk(self.location):
            for filename in files:
                if filename.startswith(self.TEMP_PREFIX):
                    os.unlink(os.path.join(root, filename))
                    removed += 1
        return removed

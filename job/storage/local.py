"""The local-path backend of job/storage/__init__.py.

Writes are atomic: a file is written to a temporary name in its folder, synced and renamed,
so readers see the old file or the whole new one. Temporary names (`.tmp-*`) are never
listed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

from job.core.errors import AccessDenied, BadInput, NotThere, write_failed

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


class LocalFiles:
    """storage's API for local paths."""

    scheme = ""
    remote = False

    def local_name(self, uri: str) -> str:
        return uri

    def write_bytes(self, uri: str, data: bytes) -> None:
        try:
            self._write_bytes(uri, data)
        except OSError as e:
            raise write_failed(e, uri) or e from None

    def _write_bytes(self, uri: str, data: bytes) -> None:
        folder = os.path.dirname(os.path.abspath(uri))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, uri)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_bytes(self, uri: str) -> bytes:
        try:
            with open(uri, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotThere(f"{uri} does not exist") from None
        except IsADirectoryError:
            raise BadInput(f"{uri} is a folder, not a file") from None
        except PermissionError:
            raise AccessDenied(f"{uri} cannot be read: permission denied") from None

    def size(self, uri: str) -> int | None:
        return os.path.getsize(uri) if os.path.isfile(uri) else None

    def list_names(self, uri: str) -> list[str]:
        if not os.path.isdir(uri):
            return []
        return sorted(n for n in os.listdir(uri) if not n.startswith(".tmp-"))

    def walk_files(self, uri: str) -> Iterator[str]:
        for folder, _, files in os.walk(uri):
            for name in files:
                if not name.startswith(".tmp-"):
                    yield os.path.relpath(os.path.join(folder, name), uri)

    def delete(self, uri: str) -> None:
        try:
            os.unlink(uri)
        except FileNotFoundError:
            pass

    def delete_tree(self, uri: str) -> None:
        shutil.rmtree(uri, ignore_errors=True)

    def check_writable(self, uri: str) -> None:
        """The nearest existing folder on the way to `uri` is a writable folder."""
        path = os.path.abspath(uri)
        probe = path
        while not os.path.exists(probe):
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        if not os.path.isdir(probe):
            raise BadInput(f"{uri} cannot be written: {probe} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise BadInput(f"{uri} cannot be written: no write permission on {probe}")

    def check_readable(self, uri: str) -> None:
        if not os.path.exists(uri):
            raise BadInput(f"{uri} does not exist")

    def upload_file(self, path: str, uri: str) -> None:
        tmp = f"{uri}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
            shutil.copyfile(path, tmp)
            os.replace(tmp, uri)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise write_failed(e, uri) or e from None

    def download_file(self, uri: str, path: str) -> None:
        try:
            shutil.copyfile(uri, path)
        except FileNotFoundError:
            raise NotThere(f"{uri} does not exist") from None

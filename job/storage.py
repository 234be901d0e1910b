"""Local paths and s3:// URIs behind one small API.

Every file the job reads or writes goes through here, so the rest of the code never asks
"is this S3?". Writes are atomic: a local write goes to a temporary name and is renamed;
an S3 object appears whole when its PUT completes. That is what lets a checkpoint's
meta.json, written last, mark the folder complete.

This is the only module that imports boto3 (lazily, on the first s3:// URI).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from job.errors import BadInput


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with '/', never dropping the base (unlike os.path.join on '/x')."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def _require_local(uri: str) -> str:
    if is_s3(uri):
        raise BadInput(f"{uri}: s3:// URIs are not supported by this build yet")
    return uri


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically (readers see the old file or the whole new one)."""
    path = _require_local(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bytes(uri: str) -> bytes:
    path = _require_local(uri)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput(f"{uri} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{uri} is a folder, not a file") from None
    except PermissionError:
        raise BadInput(f"{uri} cannot be read: permission denied") from None


def exists(uri: str) -> bool:
    return os.path.exists(_require_local(uri))


def list_names(uri: str) -> list[str]:
    """Names directly under a folder/prefix (files and sub-folders), sorted; [] if absent."""
    path = _require_local(uri)
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if not n.startswith(".tmp-"))


def delete(uri: str) -> None:
    """Delete one file; missing is fine."""
    try:
        os.unlink(_require_local(uri))
    except FileNotFoundError:
        pass


def delete_tree(uri: str) -> None:
    """Delete a folder/prefix and everything under it; missing is fine."""
    shutil.rmtree(_require_local(uri), ignore_errors=True)


def check_writable(uri: str) -> None:
    """Fail early (BadInput) if nothing could be written under folder `uri`.

    Creates nothing: walks up to the nearest existing folder and checks it is a writable
    folder, so a bad run.dir is refused before the run starts writing.
    """
    path = os.path.abspath(_require_local(uri))
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

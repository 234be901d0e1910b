"""Local paths and s3:// URIs behind one small API: one backend per scheme.

Every file the job reads or writes goes through here, so the rest of the code never asks
"is this S3?" (`is_remote` says whether a URI is stored elsewhere, e.g. to cache it). A URI
is parsed once, by `backend()`: no scheme is a local path (job/storage/local.py), s3:// is
S3 (job/storage_s3.py, boto3's standard AWS_* settings), and any other scheme is bad input
naming what works, never a local folder named after the scheme.

Writes are atomic on every backend (a local temp file renamed; an S3 object appears whole
when its PUT succeeds). That is what lets a checkpoint's meta.json, written last, mark the
folder complete. Adding a scheme: a backend class with the methods of `Backend`, one entry
in BACKENDS, and its name in SUPPORTED.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from typing import Protocol

from job.core.errors import BadInput
from job.storage.local import LocalFiles
from job.storage.s3 import S3Objects, reset_client, split_s3

__all__ = ["SUPPORTED", "backend", "check_readable", "check_writable", "delete", "delete_tree", "download_file",
           "exists", "file_sha256", "is_remote", "join", "list_names", "local_name", "read_bytes", "reset_client",
           "sha256", "size", "split_s3", "stays_inside", "upload_file", "walk_files", "write_bytes"]


class Backend(Protocol):
    scheme: str  # "" for local paths
    remote: bool  # stored elsewhere than this machine's file system

    def local_name(self, uri: str) -> str: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def size(self, uri: str) -> int | None: ...
    def list_names(self, uri: str) -> list[str]: ...
    def walk_files(self, uri: str) -> Iterator[str]: ...
    def delete(self, uri: str) -> None: ...
    def delete_tree(self, uri: str) -> None: ...
    def check_writable(self, uri: str) -> None: ...
    def check_readable(self, uri: str) -> None: ...
    def upload_file(self, path: str, uri: str) -> None: ...
    def download_file(self, uri: str, path: str) -> None: ...


# scheme -> backend; "" is a URI without a scheme (a local path).
BACKENDS: dict[str, Backend] = {"": LocalFiles(), "s3": S3Objects()}
SUPPORTED = "a local path or s3://<bucket>/<prefix>"
# A scheme is at least two letters (so a Windows drive letter is not read as one) then ":/".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")


def backend(uri: str) -> Backend:
    """The backend of `uri`'s scheme; an unknown scheme (gs://, http://, S3://, s3:/ with
    one slash) is BadInput naming what works."""
    match = _SCHEME.match(uri)
    if match is None:
        return BACKENDS[""]
    scheme = match.group(1)
    if scheme in BACKENDS and uri.startswith(f"{scheme}://"):
        return BACKENDS[scheme]
    raise BadInput(f"{uri}: {scheme}:/ is not a storage scheme this job reads or writes: use {SUPPORTED}")


def is_remote(uri: str) -> bool:
    """True for URIs stored elsewhere (s3://), False for local paths; unknown schemes raise."""
    return backend(uri).remote


def stays_inside(name: str) -> bool:
    """Whether a relative name from a manifest stays inside its folder or prefix: not
    empty, not absolute, no `..`, empty or backslash parts, no scheme."""
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and "://" not in name
            and ".." not in parts and "" not in parts)


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with '/', never dropping the base (unlike os.path.join on '/x')."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def local_name(uri: str) -> str:
    """A relative local path that stands for a remote URI (a cache's layout): bucket/key."""
    return backend(uri).local_name(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically (readers see the old object or the whole new one)."""
    backend(uri).write_bytes(uri, data)


def read_bytes(uri: str) -> bytes:
    return backend(uri).read_bytes(uri)


def exists(uri: str) -> bool:
    """Whether a file (object) exists at `uri`."""
    return size(uri) is not None


def size(uri: str) -> int | None:
    """Size in bytes of the file at `uri`, or None if there is none."""
    return backend(uri).size(uri)


def list_names(uri: str) -> list[str]:
    """Names directly under a folder/prefix (files and sub-folders), sorted; [] if absent."""
    return backend(uri).list_names(uri)


def walk_files(uri: str) -> Iterator[str]:
    """Relative paths of every file under a folder/prefix, recursively."""
    return backend(uri).walk_files(uri)


def delete(uri: str) -> None:
    """Delete one file; missing is fine."""
    backend(uri).delete(uri)


def delete_tree(uri: str) -> None:
    """Delete a folder/prefix and everything under it; missing is fine."""
    backend(uri).delete_tree(uri)


def check_writable(uri: str) -> None:
    """Fail early (BadInput / StorageUnreachable) if nothing could be written under `uri`.

    Writes nothing. For S3 it checks that the bucket exists and the credentials are
    accepted; locally, that the nearest existing folder is a writable folder.
    """
    backend(uri).check_writable(uri)


def check_readable(uri: str) -> None:
    """Fail early if `uri` is missing (local) or its bucket is missing or refuses these credentials."""
    backend(uri).check_readable(uri)


def sha256(data: bytes) -> str:
    """The hex sha256 of bytes: what manifests and model records name files by."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload_file(path: str, uri: str) -> None:
    """Copy a local file to `uri` (S3: multipart above 64 MB), atomically."""
    backend(uri).upload_file(path, uri)


def download_file(uri: str, path: str, sha256: str | None = None) -> None:
    """Copy `uri` to a local file; with `sha256`, verify it before the file appears."""
    source = backend(uri)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        source.download_file(uri, tmp)
        if sha256 is not None and file_sha256(tmp) != sha256:
            raise BadInput(f"{uri} does not match its sha256 in the manifest (corrupt or altered)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

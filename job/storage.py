"""Local paths and s3:// URIs behind one small API.

Every file the job reads or writes goes through here, so the rest of the code never asks
"is this S3?". Writes are atomic: a local write goes to a temporary name and is renamed;
an S3 object appears whole when its PUT (or multipart completion) succeeds. That is what
lets a checkpoint's meta.json, written last, mark the folder complete.

S3 settings come from boto3's standard chain only: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity (IRSA), AWS_MAX_ATTEMPTS (default 5),
AWS_RETRY_MODE (default adaptive). Two knobs of ours bound the wait for a dead endpoint:
DIGITS_S3_CONNECT_TIMEOUT (seconds, default 5) and DIGITS_S3_READ_TIMEOUT (default 60).

This is the only module that imports boto3 (lazily, on the first s3:// URI).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

from job.errors import BadInput, StorageUnreachable

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # bytes; larger files go up and down in parts


def stays_inside(name: str) -> bool:
    """Whether a relative name from a manifest stays inside its folder or prefix: not
    empty, not absolute, no `..`, empty or backslash parts, no scheme."""
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and "://" not in name
            and ".." not in parts and "" not in parts)


# What a URI may be; anything else with a scheme is refused, never taken for a local folder
# named after its scheme. (At least two letters, so no drive letter is read as a scheme.)
SUPPORTED = "a local path or s3://<bucket>/<prefix>"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
# S3's bucket naming rules: 3-63 lower-case letters, digits, dots and hyphens, starting and
# ending with a letter or digit, no "..", not an IP address. A name S3 would reject is bad
# input (exit 2) found before any request, not a retryable storage error (exit 3).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def is_remote(uri: str) -> bool:
    """True for s3:// URIs, False for local paths; any other scheme (gs://, http://, S3://,
    s3:/ with one slash) is BadInput naming what works."""
    if uri.startswith("s3://"):
        return True
    scheme = _SCHEME.match(uri)
    if scheme:
        raise BadInput(f"{uri}: {scheme.group(1)}:/ is not a storage scheme this job reads or writes: "
                       f"use {SUPPORTED}")
    return False


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with '/', never dropping the base (unlike os.path.join on '/x')."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise BadInput(f"{uri} has no bucket name: write s3://<bucket>/<prefix>")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP.match(bucket):
        raise BadInput(f"{uri}: {bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots "
                       "and hyphens, starting and ending with a letter or digit)")
    return bucket, key


def local_name(uri: str) -> str:
    """A relative local path that stands for a remote URI (a cache's layout): bucket/key."""
    bucket, key = split_s3(uri)
    return f"{bucket}/{key.strip('/')}".rstrip("/")


# ----------------------------------------------------------------------------- S3 client

_client = None
_client_lock = threading.Lock()


def _s3():
    """The process's boto3 S3 client (thread-safe), created on first use."""
    global _client
    with _client_lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={
                    "mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
                    "max_attempts": _max_attempts(),
                },
                connect_timeout=float(os.environ.get("DIGITS_S3_CONNECT_TIMEOUT", "5")),
                read_timeout=float(os.environ.get("DIGITS_S3_READ_TIMEOUT", "60")),
                # Checksums on every upload; verified on download when the server sent one.
                request_checksum_calculation="when_supported",
                response_checksum_validation="when_supported",
                max_pool_connections=32,
            )
            _client = boto3.session.Session().client("s3", config=cfg)
        return _client


def _max_attempts() -> int:
    """Tries per S3 request (AWS_MAX_ATTEMPTS, default 5), for botocore and for body reads."""
    return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "5")))


def reset_client() -> None:
    """Forget the cached client (tests change AWS_* variables between runs)."""
    global _client
    with _client_lock:
        _client = None


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS S3 endpoint"


class _S3Errors:
    """Context manager translating boto errors on `uri` into one-line job errors."""

    def __init__(self, uri: str, bucket_level: bool = False):
        self.uri = uri
        self.bucket_level = bucket_level  # a bare 404 then means "no such bucket"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        from botocore import exceptions as bx

        uri = self.uri
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            raise BadInput(
                f"{uri}: no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from None
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                            bx.ConnectionClosedError)):
            raise StorageUnreachable(
                f"{uri}: storage endpoint {_endpoint()} is unreachable ({type(exc).__name__}); "
                "check AWS_ENDPOINT_URL and the network (timeouts: DIGITS_S3_CONNECT_TIMEOUT, AWS_MAX_ATTEMPTS)"
            ) from None
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            bucket = split_s3(uri)[0]
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and self.bucket_level):
                raise BadInput(f"{uri}: bucket {bucket!r} does not exist at {_endpoint()}: create it first") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                        "InvalidToken", "ExpiredToken") or status == 403:
                raise BadInput(
                    f"{uri}: access denied ({code or status}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE and the bucket policy"
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise BadInput(f"{uri} does not exist") from None
            if status is not None and status >= 500:
                raise StorageUnreachable(f"{uri}: storage at {_endpoint()} failed: {code} (HTTP {status})") from None
            raise BadInput(f"{uri}: storage refused the request: {code} {err.get('Message', '')}") from None
        if isinstance(exc, bx.BotoCoreError):
            raise StorageUnreachable(f"{uri}: storage error at {_endpoint()}: {exc}") from None
        return False


def _missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    code = str(exc.response.get("Error", {}).get("Code")) if isinstance(exc, ClientError) else None
    return code in ("404", "NoSuchKey", "NotFound")


# ----------------------------------------------------------------------------- the API

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically (readers see the old object or the whole new one)."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            if len(data) >= MULTIPART_THRESHOLD:
                import io

                _s3().upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config())
            else:
                _s3().put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        return
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


def _read_object(bucket: str, key: str) -> bytes:
    """GET an object's bytes, retrying when the body is cut off, stalls or fails its checksum.

    botocore retries a request until its response headers arrive; the body is read after
    that, outside its retry loop, so a connection dropped mid-body would otherwise fail the job.
    """
    from botocore import exceptions as bx

    attempts = _max_attempts()
    for attempt in range(1, attempts + 1):
        try:
            body = _s3().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"]
            return body.read()
        except (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError, bx.FlexibleChecksumError):
            if attempt == attempts:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def read_bytes(uri: str) -> bytes:
    if is_remote(uri):
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            return _read_object(bucket, key)
    try:
        with open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput(f"{uri} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{uri} is a folder, not a file") from None
    except PermissionError:
        raise BadInput(f"{uri} cannot be read: permission denied") from None


def exists(uri: str) -> bool:
    """Whether a file (object) exists at `uri`."""
    return size(uri) is not None


def size(uri: str) -> int | None:
    """Size in bytes of the file at `uri`, or None if there is none."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            try:
                return int(_s3().head_object(Bucket=bucket, Key=key)["ContentLength"])
            except Exception as e:  # a 404 (no such key, or no such bucket) means absent
                if _missing(e):
                    return None
                raise
    return os.path.getsize(uri) if os.path.isfile(uri) else None


def list_names(uri: str) -> list[str]:
    """Names directly under a folder/prefix (files and sub-folders), sorted; [] if absent."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names = set()
        with _S3Errors(uri):
            for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
                names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(n for n in names if n)
    if not os.path.isdir(uri):
        return []
    return sorted(n for n in os.listdir(uri) if not n.startswith(".tmp-"))


def walk_files(uri: str) -> Iterator[str]:
    """Relative paths of every file under a folder/prefix, recursively."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        with _S3Errors(uri):
            for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    yield o["Key"][len(prefix) :]
        return
    for folder, _, files in os.walk(uri):
        for name in files:
            if not name.startswith(".tmp-"):
                yield os.path.relpath(os.path.join(folder, name), uri)


def delete(uri: str) -> None:
    """Delete one file; missing is fine."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            _s3().delete_object(Bucket=bucket, Key=key)
        return
    try:
        os.unlink(uri)
    except FileNotFoundError:
        pass


def delete_tree(uri: str) -> None:
    """Delete a folder/prefix and everything under it; missing is fine."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/"
        keys = [prefix + rel for rel in walk_files(uri)]
        with _S3Errors(uri):
            for i in range(0, len(keys), 1000):
                _s3().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
        return
    shutil.rmtree(uri, ignore_errors=True)


def check_writable(uri: str) -> None:
    """Fail early (BadInput / StorageUnreachable) if nothing could be written under `uri`.

    Writes nothing. For S3 it checks that the bucket exists and the credentials are
    accepted; locally, that the nearest existing folder is a writable folder.
    """
    if is_remote(uri):
        bucket, _ = split_s3(uri)
        with _S3Errors(uri, bucket_level=True):
            _s3().head_bucket(Bucket=bucket)
        return
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


def check_readable(uri: str) -> None:
    """Fail early if the bucket behind `uri` is missing or refuses these credentials."""
    if is_remote(uri):
        check_writable(uri)  # the same bucket-level check
    elif not os.path.exists(uri):
        raise BadInput(f"{uri} does not exist")


# ----------------------------------------------------------------------------- files


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD // 4,
                          max_concurrency=8)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload_file(path: str, uri: str) -> None:
    """Copy a local file to `uri` (multipart above MULTIPART_THRESHOLD), atomically."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            _s3().upload_file(path, bucket, key, Config=_transfer_config(),
                              ExtraArgs={"ChecksumAlgorithm": "SHA256"})
        return
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    tmp = f"{uri}.tmp-{os.getpid()}"
    shutil.copyfile(path, tmp)
    os.replace(tmp, uri)


def download_file(uri: str, path: str, sha256: str | None = None) -> None:
    """Copy `uri` to a local file; with `sha256`, verify it before the file appears."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        if is_remote(uri):
            bucket, key = split_s3(uri)
            with _S3Errors(uri):
                _s3().download_file(bucket, key, tmp, Config=_transfer_config())
        else:
            try:
                shutil.copyfile(uri, tmp)
            except FileNotFoundError:
                raise BadInput(f"{uri} does not exist") from None
        if sha256 is not None and file_sha256(tmp) != sha256:
            raise BadInput(f"{uri} does not match its sha256 in the manifest (corrupt or altered)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


"""The s3:// backend of job/storage/__init__.py (boto3, imported on the first s3:// URI).

S3 settings come from boto3's standard chain only: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity (IRSA), AWS_MAX_ATTEMPTS (default 5),
AWS_RETRY_MODE (default adaptive). Two knobs of ours bound the wait for a dead endpoint:
DIGITS_S3_CONNECT_TIMEOUT (seconds, default 5) and DIGITS_S3_READ_TIMEOUT (default 60).
An object appears whole when its PUT (or multipart completion) succeeds: writes are atomic.

This is the only module that imports boto3.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Iterator

from job.core.errors import AccessDenied, BadInput, NotThere, StorageUnreachable

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # bytes; larger files go up and down in parts
# S3's bucket naming rules: 3-63 lower-case letters, digits, dots and hyphens, starting and
# ending with a letter or digit, no "..", not an IP address. A name S3 would reject is bad
# input (exit 2) found before any request, not a retryable storage error (exit 3).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise BadInput(f"{uri} has no bucket name: write s3://<bucket>/<prefix>")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP.match(bucket):
        raise BadInput(f"{uri}: {bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots "
                       "and hyphens, starting and ending with a letter or digit)")
    return bucket, key


# ----------------------------------------------------------------------------- client and errors

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
                # Checksums on every upload; verified on download when the server sent one. The
                # SDK's own variables turn them down for stores that refuse the headers (GCS's
                # S3 interoperability: scripts/submit.sh sets when_required for it).
                request_checksum_calculation=os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION",
                                                            "when_supported").lower(),
                response_checksum_validation=os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION",
                                                            "when_supported").lower(),
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
                raise NotThere(f"{uri}: bucket {bucket!r} does not exist at {_endpoint()}: create it first") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                        "InvalidToken", "ExpiredToken") or status == 403:
                raise AccessDenied(
                    f"{uri}: access denied ({code or status}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE and the bucket policy"
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotThere(f"{uri} does not exist") from None
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


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD // 4,
                          max_concurrency=8)


# ----------------------------------------------------------------------------- the backend


class S3Objects:
    """storage's API for s3://<bucket>/<key> URIs."""

    scheme = "s3"
    remote = True

    def local_name(self, uri: str) -> str:
        bucket, key = split_s3(uri)
        return f"{bucket}/{key.strip('/')}".rstrip("/")

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            if len(data) >= MULTIPART_THRESHOLD:
                _s3().upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config())
            else:
                _s3().put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            return _read_object(bucket, key)

    def size(self, uri: str) -> int | None:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            try:
                return int(_s3().head_object(Bucket=bucket, Key=key)["ContentLength"])
            except Exception as e:  # a 404 (no such key, or no such bucket) means absent
                if _missing(e):
                    return None
                raise

    def list_names(self, uri: str) -> list[str]:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names = set()
        with _S3Errors(uri):
            for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
                names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(n for n in names if n)

    def walk_files(self, uri: str) -> Iterator[str]:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        with _S3Errors(uri):
            for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    yield o["Key"][len(prefix) :]

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            _s3().delete_object(Bucket=bucket, Key=key)

    def delete_tree(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/"
        keys = [prefix + rel for rel in self.walk_files(uri)]
        with _S3Errors(uri):
            for i in range(0, len(keys), 1000):
                _s3().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})

    def check_writable(self, uri: str) -> None:
        """The bucket exists and accepts these credentials (a HEAD; writes nothing)."""
        bucket, _ = split_s3(uri)
        with _S3Errors(uri, bucket_level=True):
            _s3().head_bucket(Bucket=bucket)

    def check_readable(self, uri: str) -> None:
        self.check_writable(uri)  # the same bucket-level check

    def upload_file(self, path: str, uri: str) -> None:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            _s3().upload_file(path, bucket, key, Config=_transfer_config(), ExtraArgs={"ChecksumAlgorithm": "SHA256"})

    def download_file(self, uri: str, path: str) -> None:
        bucket, key = split_s3(uri)
        with _S3Errors(uri):
            _s3().download_file(bucket, key, path, Config=_transfer_config())

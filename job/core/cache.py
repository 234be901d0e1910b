"""The job's cache folder: staged datasets, shard sets copied from S3 for the readers, and
the precision measurements of `auto`. Local to the machine (a pod's emptyDir), never shared
state: anything in it can be made again."""

from __future__ import annotations

import os

from job.core.errors import BadInput


def cache_dir() -> str:
    """$DIGITS_CACHE_DIR, else ~/.cache/digit-job (XDG_CACHE_HOME respected), created if
    needed. Not writable (a read-only root with nothing mounted there): BadInput, one line."""
    path = os.environ.get("DIGITS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "digit-job")
    try:
        os.makedirs(path, exist_ok=True)
        writable = os.access(path, os.W_OK)
        reason = "not writable"
    except OSError as e:
        writable, reason = False, e.strerror or type(e).__name__
    if not writable:
        raise BadInput(f"the cache folder {path} cannot be written ({reason}): mount a writable volume there "
                       "(an emptyDir in Kubernetes, --tmpfs with docker/podman) or set DIGITS_CACHE_DIR")
    return path

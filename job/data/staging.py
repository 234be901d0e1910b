"""A dataset staged on S3 (by `job data push`, job/data/push.py), brought to the node's
cache when data.root is an s3:// prefix: every file checked against the pushed manifest's
sha256, downloaded once per node and reused after."""

from __future__ import annotations

import json
import os

from job import storage
from job.core.cache import cache_dir
from job.core.errors import BadInput

DATASET_MANIFEST = "manifest.json"


def fetch(uri: str, name: str) -> str:
    """A local, verified copy of dataset `name` pushed to `uri`; downloaded once per node.

    Files are checked against manifest.json's sha256 on download, and a cached copy is
    reused on the next run. Call with the dataset lock held.
    """
    storage.check_readable(uri)
    manifest_uri = storage.join(uri, DATASET_MANIFEST)
    if not storage.exists(manifest_uri):
        raise BadInput(f"{uri} holds no {DATASET_MANIFEST}: stage it with `python -m job data push {name} {uri}`")
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        files = manifest["files"]
        entries = [(str(rel), str(entry["sha256"])) for rel, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadInput(f"{manifest_uri} is not a digit-job dataset manifest") from None
    if manifest.get("name") != name:
        raise BadInput(f"{uri} holds {manifest.get('name')!r}, not data.name={name!r}")
    local = os.path.join(cache_dir(), "datasets", *storage.local_name(uri).split("/"))
    for rel, digest in entries:
        if not storage.stays_inside(rel):
            raise BadInput(f"{manifest_uri} names a file outside its prefix: {rel!r}")
        path = os.path.join(local, *rel.split("/"))
        if os.path.isfile(path) and storage.file_sha256(path) == digest:
            continue  # cached and verified
        storage.download_file(storage.join(uri, rel), path, sha256=digest)
    return local

"""Reading back a finished shard set (`job sample`'s output): its manifest, and its shards
with every file checked against the manifest's sha256. Used by `job evaluate` (digits and
strings) and by the public readers (job.readers), so it imports nothing above storage.

Its errors are standard exceptions too (FileNotFoundError, ValueError) for code that uses
the readers; the job's commands see them as BadInput (exit 2).
"""

from __future__ import annotations

import json

import torch

from job import storage
from job.core.errors import BadInput
from job.shardsets import formats

MANIFEST = "manifest.json"  # written last by `job sample`: its presence marks a complete set


class ShardSetMissing(BadInput, FileNotFoundError):
    """There is no complete shard set at that URI (no manifest)."""


class ShardSetInvalid(BadInput, ValueError):
    """A manifest or a shard file is not what a shard set holds, or not what its manifest says."""


def manifest_uri(uri: str) -> str:
    """Where the manifest of the shard set at `uri` is."""
    return storage.join(uri, MANIFEST)


def safe_name(name: str, where: str) -> str:
    """A manifest's file name must stay inside its folder."""
    if not storage.stays_inside(name):
        raise ShardSetInvalid(f"{where} names a file outside its folder: {name!r}")
    return name


def read_manifest(uri: str) -> dict:
    """The manifest of a complete shard set (BadInput when there is none or it is not one)."""
    where = manifest_uri(uri)
    if not storage.exists(where):
        raise ShardSetMissing(f"{uri} is not a complete shard set: no {MANIFEST} (has `job sample` finished?)")
    try:
        manifest = json.loads(storage.read_bytes(where))
        fmt, records = manifest["shard_format"], manifest["shards"]
        if not isinstance(records, list):
            raise TypeError("shards is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise ShardSetInvalid(f"{where} is not a digit-job manifest ({e})") from None
    if fmt not in formats.FORMATS:
        raise ShardSetInvalid(f"{where} names an unknown shard format {fmt!r}")
    return manifest


def verified_shard_files(uri: str, record: dict, where: str, verify: bool = True) -> dict[str, bytes]:
    """{name: bytes} of one shard of the set at `uri`, each name kept inside the set's folder
    and, unless verify=False, each file checked against its manifest sha256. `where`: the
    manifest's URI, named in errors."""
    files = {}
    for name, entry in record["files"].items():
        blob = storage.read_bytes(storage.join(uri, safe_name(name, where)))
        if verify and storage.sha256(blob) != entry["sha256"]:
            raise ShardSetInvalid(f"{storage.join(uri, name)} does not match the sha256 in {where}")
        files[name] = blob
    return files


def shard_set_digits(uri: str, manifest: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n digits of a complete shard set, in shard order, each file checked against
    the manifest's sha256. Returns (images, labels)."""
    fmt, records = manifest["shard_format"], manifest["shards"]
    images, labels, have = [], [], 0
    for record in records:
        if have >= n:
            break
        x, y = formats.decode(fmt, verified_shard_files(uri, record, manifest_uri(uri)))
        images.append(x)
        labels.append(y)
        have += len(y)
    if not images:
        raise BadInput(f"samples={uri} holds no digits")
    return torch.cat(images)[:n], torch.cat(labels)[:n]

"""Reading back a finished shard set (`job sample`'s output): its manifest, and its shards
with every file checked against the manifest's sha256. Used by `job evaluate` for single
digits and for strings.
"""

from __future__ import annotations

import json

import torch

from job import checkpoint, sample, shards, storage
from job.errors import BadInput


def _safe_name(name: str, where: str) -> str:
    """A manifest's file name must stay inside its folder."""
    if not storage.stays_inside(name):
        raise BadInput(f"{where} names a file outside its folder: {name!r}")
    return name


def read_manifest(uri: str) -> dict:
    """The manifest of a complete shard set (BadInput when there is none or it is not one)."""
    manifest_uri = storage.join(uri, sample.MANIFEST)
    if not storage.exists(manifest_uri):
        raise BadInput(f"samples={uri} is not a complete shard set: no {sample.MANIFEST} (is `job sample` finished?)")
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        fmt, records = manifest["shard_format"], manifest["shards"]
        if not isinstance(records, list):
            raise TypeError("shards is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{manifest_uri} is not a digit-job manifest ({e})") from None
    if fmt not in shards.FORMATS:
        raise BadInput(f"{manifest_uri} names an unknown shard format {fmt!r}")
    return manifest


def verified_shard_files(uri: str, record: dict, manifest_uri: str) -> dict[str, bytes]:
    """{name: bytes} of one shard of the set at `uri`, each checked against its manifest sha256."""
    files = {}
    for name, entry in record["files"].items():
        blob = storage.read_bytes(storage.join(uri, _safe_name(name, manifest_uri)))
        if checkpoint.sha256(blob) != entry["sha256"]:
            raise BadInput(f"{storage.join(uri, name)} does not match the sha256 in {manifest_uri}")
        files[name] = blob
    return files


def shard_set_digits(uri: str, manifest: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n digits of a complete shard set, in shard order, each file checked against
    the manifest's sha256. Returns (images, labels)."""
    manifest_uri = storage.join(uri, sample.MANIFEST)
    fmt, records = manifest["shard_format"], manifest["shards"]
    images, labels, have = [], [], 0
    for record in records:
        if have >= n:
            break
        x, y = shards.decode(fmt, verified_shard_files(uri, record, manifest_uri))
        images.append(x)
        labels.append(y)
        have += len(y)
    if not images:
        raise BadInput(f"samples={uri} holds no digits")
    return torch.cat(images)[:n], torch.cat(labels)[:n]

"""`job data push`: stage a dataset where every pod can read it. Copies a local dataset's
files (downloading them there first when online) to a folder or s3:// prefix, then
manifest.json with their sha256, which job/data/staging.py checks on the way back.

    python -m job data push mnist s3://bucket/datasets/mnist [data.root=/data]
"""

from __future__ import annotations

import dataclasses
import json
import os

from job import storage
from job.core import config, console
from job.core.errors import BadInput
from job.data import datasets
from job.data.loading import load_split
from job.data.staging import DATASET_MANIFEST


def dataset_files(dataset: datasets.Dataset, root: str) -> dict[str, str]:
    """{name relative to root (with / inside an image folder): local path} of what a
    dataset is read from."""
    if dataset.idx_files:
        return {os.path.basename(p): p for p in datasets.find_idx_files(root, dataset).values()}
    if dataset.flat_files:
        paths = {n: os.path.join(root, n) for n in dataset.flat_files}
        return {n: p for n, p in paths.items() if os.path.isfile(p)}
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root).replace(os.sep, "/")] = path
    return files


def push(name: str, data_cfg: config.DataConfig, dest: str) -> dict:
    """Stage dataset `name` from local data.root (downloading it there first when online)
    to `dest` (folder or s3:// prefix): its files, then manifest.json with their sha256."""
    dataset = datasets.named(name)
    storage.check_writable(dest)
    if storage.is_remote(data_cfg.root):
        raise BadInput(f"data push reads a local folder: data.root={data_cfg.root} is already on S3")
    # Reading the dataset first proves it is complete (and downloads it when online).
    load_split(dataclasses.replace(data_cfg, name=name), train=True)
    files = dataset_files(dataset, datasets.dataset_folder(data_cfg.root, dataset))
    if not files:
        raise BadInput(f"data.root={data_cfg.root} holds no {name} files to push")
    entries = {}
    for rel, path in files.items():
        storage.upload_file(path, storage.join(dest, rel))
        entries[rel] = {"sha256": storage.file_sha256(path), "bytes": os.path.getsize(path)}
    manifest = {"format": "digit-job/dataset", "version": 1, "name": name, "files": entries}
    storage.write_bytes(storage.join(dest, DATASET_MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def main(cfg: config.DataJob, action: str, name: str, dest: str) -> int:
    """`job data push <dataset> <dest>`: the only action."""
    manifest = push(name, cfg.data, dest)
    total = sum(f["bytes"] for f in manifest["files"].values())
    console.say(f"pushed {name} ({len(manifest['files'])} files, {total / 1e6:.1f} MB) "
                f"from {cfg.data.root} to {dest} with manifest.json")
    return 0

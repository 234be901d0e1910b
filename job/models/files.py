"""Model files: the one safetensors file a run exports (`<run>/generator.safetensors`,
`autoencoder.safetensors`, `classifier.safetensors`) and the tensors <-> bytes conversion
that checkpoints use too.

A model file's safetensors metadata holds its kind, architecture and constructor arguments,
so the network can be rebuilt with nothing else (job/models/__init__.py does). Metadata keys
are written in sorted order, so the same weights always give the same bytes and sha256.
Nothing is loaded with pickle.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import job
from job import storage
from job.core.errors import BadInput
from job.core.kinds import CLASSIFIER_FILE, GENERATOR_FILE

MODEL_FORMAT = "digit-job/model"  # generator and classifier files alike


MODEL_FORMAT = "digit-job/model"  # generator and classifier files alike


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    # safetensors wants contiguous CPU tensors that share no memory.
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = st_save(clean, metadata=metadata)
    return _sorted_metadata(data) if metadata and len(metadata) > 1 else data


def _sorted_metadata(data: bytes) -> bytes:
    """The same file with its metadata keys in sorted order.

    safetensors writes metadata from a hash map, whose order changes from call to call, so
    the same weights would give files with different bytes (and sha256). Offsets are
    explicit in the header, so reordering its JSON keys changes nothing else; the header
    keeps its length (the original padding is spaces, which JSON ignores).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:  # cannot happen for the same keys and values; keep the original
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n :]


def bytes_to_tensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise BadInput(f"{where} is not a valid safetensors file ({e})") from None


def export_model(
    uri: str, state_dict: dict[str, torch.Tensor], kind: str, arch: str, kwargs: dict, step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a self-describing model file: weights plus what rebuilds the network.
    `extra` (JSON-able) holds facts a reader may want without loading, e.g. test accuracy."""
    metadata = {
        "format": MODEL_FORMAT,
        "version": "1",
        "job_version": job.__version__,
        "kind": kind,
        "arch": arch,
        "kwargs": json.dumps(kwargs, sort_keys=True),
        "step": str(step),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    storage.write_bytes(uri, tensors_to_bytes(state_dict, metadata))


def read_model_file(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], bytes]:
    """(state_dict, info, raw bytes) of a model file; info has kind, arch, kwargs, step, extra."""
    data = storage.read_bytes(uri)
    tensors = bytes_to_tensors(data, uri)
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != MODEL_FORMAT:
            raise ValueError("no digit-job model metadata")
        info = {
            "kind": metadata["kind"],
            "arch": metadata["arch"],
            "kwargs": json.loads(metadata["kwargs"]),
            "step": int(metadata["step"]),
            "extra": json.loads(metadata.get("extra", "{}")),
        }
        if not isinstance(info["kwargs"], dict) or not isinstance(info["extra"], dict):
            raise ValueError("kwargs and extra must be JSON objects")
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(
            f"{uri} is not a digit-job model file ({e}); pass <run>/{GENERATOR_FILE} or <run>/{CLASSIFIER_FILE}"
        ) from None
    return tensors, info, data

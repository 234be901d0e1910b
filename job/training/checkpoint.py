"""Pickle-free training checkpoints.

A checkpoint is a folder `<run>/checkpoints/step-00001234/` with:
    <module>.safetensors           one per module (generator, discriminator, generator_ema)
    optimizer_<name>.safetensors   optimizer tensors (exp_avg, ...), keys "state.<i>.<name>"
    optimizer_<name>.json          optimizer param_groups and non-tensor state
    rng.safetensors                global torch RNG state of every rank ("cpu.rank<r>", ...)
    state.json                     other scalars (grad scalers, ...)
    meta.json                      step, config, versions, sha256 of every file above
meta.json is written last, so a folder without it is incomplete and never resumed from.
Files are verified against meta.json's sums on load. Nothing is loaded with pickle.

The model file a run exports at the end (generator.safetensors, ...) is job/models/files.py's.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

import job
from job import storage
from job.core.errors import BadInput
from job.models.files import bytes_to_tensors, tensors_to_bytes

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
FORMAT = "digit-job/checkpoint"


def step_dir(run_dir: str, step: int) -> str:
    return storage.join(run_dir, CHECKPOINT_DIR, f"step-{step:08d}")


# ------------------------------------------------------------------ optimizer state <-> files


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors and JSON-able scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, scalars in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": info["param_groups"]}


def match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor (exp_avg, ...) its parameter's memory layout.

    safetensors stores tensors contiguous, so moments of a channels_last parameter come back
    in NCHW order. The foreach kernels cope; the fused Adam kernel walks parameter and state as
    one flat buffer each, so a mismatch silently pairs the wrong elements (a resumed run
    diverged from the uninterrupted one until this was added)."""
    for group in opt.param_groups:
        for param in group["params"]:
            state = opt.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# ------------------------------------------------------------------ checkpoints


@dataclass
class Checkpoint:
    """What one checkpoint holds, in memory."""

    step: int
    modules: dict[str, dict[str, torch.Tensor]]  # name -> state_dict
    optimizers: dict[str, tuple[dict[str, torch.Tensor], dict]]  # name -> (tensors, json)
    rng: dict[str, torch.Tensor]
    state: dict  # JSON scalars
    config: dict


def save(run_dir: str, ckpt: Checkpoint) -> str:
    """Write a checkpoint folder, meta.json last. Returns the folder URI."""
    folder = step_dir(run_dir, ckpt.step)
    files: dict[str, bytes] = {}
    for name, sd in ckpt.modules.items():
        files[f"{name}.safetensors"] = tensors_to_bytes(sd)
    for name, (tensors, info) in ckpt.optimizers.items():
        files[f"optimizer_{name}.safetensors"] = tensors_to_bytes(tensors)
        files[f"optimizer_{name}.json"] = json.dumps(info, indent=1).encode()
    files["rng.safetensors"] = tensors_to_bytes(ckpt.rng)
    files["state.json"] = json.dumps(ckpt.state, indent=1).encode()
    for name, data in files.items():
        storage.write_bytes(storage.join(folder, name), data)
    meta = {
        "format": FORMAT,
        "version": 1,
        "job_version": job.__version__,
        "step": ckpt.step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: storage.sha256(data) for name, data in files.items()},
        "config": ckpt.config,
    }
    storage.write_bytes(storage.join(folder, "meta.json"), json.dumps(meta, indent=1).encode())
    return folder


def _step_of(name: str) -> int | None:
    m = _STEP_DIR.match(name.rstrip("/"))
    return int(m.group(1)) if m else None


def complete_steps(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints (those with meta.json) under run_dir, ascending."""
    root = storage.join(run_dir, CHECKPOINT_DIR)
    steps = []
    for name in storage.list_names(root):
        step = _step_of(name)
        if step is not None and storage.exists(storage.join(root, name.rstrip("/"), "meta.json")):
            steps.append(step)
    return sorted(steps)


def latest(run_dir: str) -> str | None:
    """URI of the newest complete checkpoint folder, or None."""
    steps = complete_steps(run_dir)
    return step_dir(run_dir, steps[-1]) if steps else None


def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{uri} is not valid JSON ({e})") from None


def load(folder: str) -> Checkpoint:
    """Read and verify a checkpoint folder. Anything missing or altered raises BadInput."""
    folder = folder.rstrip("/")
    meta_uri = storage.join(folder, "meta.json")
    if not storage.exists(meta_uri):
        raise BadInput(f"{folder} is not a complete checkpoint (no meta.json); pick another or resume=never")
    meta = _read_json(meta_uri)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise BadInput(f"{meta_uri} is not a digit-job checkpoint meta.json")
    blobs = {}
    for name, digest in meta["files"].items():
        if "/" in name or name.startswith("."):
            raise BadInput(f"{meta_uri} names a file outside its folder: {name!r}")
        data = storage.read_bytes(storage.join(folder, name))
        if storage.sha256(data) != digest:
            raise BadInput(
                f"{storage.join(folder, name)} does not match the sha256 in meta.json (corrupt or altered); "
                "resume from another checkpoint with resume=<folder>"
            )
        blobs[name] = data
    modules, optimizers = {}, {}
    for name, data in blobs.items():
        where = storage.join(folder, name)
        if name.startswith("optimizer_") and name.endswith(".safetensors"):
            opt = name[len("optimizer_") : -len(".safetensors")]
            info = json.loads(blobs[f"optimizer_{opt}.json"])
            optimizers[opt] = (bytes_to_tensors(data, where), info)
        elif name.endswith(".safetensors") and name != "rng.safetensors":
            modules[name[: -len(".safetensors")]] = bytes_to_tensors(data, where)
    return Checkpoint(
        step=int(meta["step"]),
        modules=modules,
        optimizers=optimizers,
        rng=bytes_to_tensors(blobs["rng.safetensors"], storage.join(folder, "rng.safetensors")),
        state=json.loads(blobs["state.json"]),
        config=meta.get("config", {}),
    )


def prune(run_dir: str, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete older ones and incomplete leftovers.

    meta.json goes first, so a folder whose deletion is interrupted reads as incomplete.
    """
    root = storage.join(run_dir, CHECKPOINT_DIR)
    complete = complete_steps(run_dir)
    keep_steps = set(complete[-keep:])
    for name in storage.list_names(root):
        step = _step_of(name)
        if step is None or step in keep_steps:
            continue
        folder = storage.join(root, name.rstrip("/"))
        storage.delete(storage.join(folder, "meta.json"))
        storage.delete_tree(folder)

"""Sample shards: encoders, decoders and names for the three formats.

- safetensors: `shard-000123.safetensors` with `images` uint8 [N, C, H, W], `labels` int64 [N]
- webdataset:  `shard-000123.tar` with `000123_000045.png` + `000123_000045.cls` per digit
- idx:         `shard-000123-images-idx3-ubyte.gz` (+ `shard-000123-labels-idx1-ubyte.gz`),
               the MNIST file format that any MNIST loader reads

Strings (`layout=strings`) in the same files:
- safetensors: `images` uint8 [N, C, H, W] padded on the right to the shard's widest,
  `widths` [N], `labels` [N, L] (the digits, -1 past the end), `lengths` [N], `boxes`
  [N, L, 4] ([x0, y0, x1, y1) per digit, -1 past the end)
- webdataset: `<key>.png` (the image at its own width), `<key>.txt` (the string) and
  `<key>.json` ({"text", "boxes"})

Encoders are deterministic: the same tensors give the same bytes (tar and gzip headers
carry no timestamps or owners), so a shard's sha256 depends only on its contents.
Unconditional samples have label -1 (safetensors, webdataset `.cls`) and no idx label file.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from job.core.errors import BadInput

NO_LABEL = -1


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ShardFormat:
    """One shard format: its file names and codecs. Strings are optional (idx has none)."""

    name: str
    files: Callable[[int, bool], list[str]]  # (index, labeled) -> file names, data file first
    encode: Callable[[int, torch.Tensor, torch.Tensor, bool], dict[str, bytes]]  # (index, images, labels, labeled)
    decode: Callable[[dict[str, bytes]], tuple[torch.Tensor, torch.Tensor]]  # files -> (images, labels)
    encode_strings: Callable[[int, Any], dict[str, bytes]] | None = None  # (index, StringBatch) -> files
    decode_strings: Callable[[dict[str, bytes]], list] | None = None
    # (path of the data file, strings) -> ShardItems: random access to one shard's items
    # without reading all of it (memory-mapped); None: the readers load the files' bytes.
    open_file: Callable[[str, bool], ShardItems] | None = None
    # ({file name: bytes}, strings) -> ShardItems: random access to a shard in memory that
    # decodes only the items asked for; None: the whole shard is decoded up front.
    read_items: Callable[[dict[str, bytes], bool], ShardItems] | None = None

    @property
    def holds_strings(self) -> bool:
        return self.encode_strings is not None


def format_named(name: str) -> ShardFormat:
    """The registered format `name`; anything else is bad input naming the formats there are."""
    if name not in FORMATS:
        raise BadInput(f"format={name!r} is not allowed: use one of {', '.join(FORMATS)} (the shard formats)")
    return FORMATS[name]


def shard_files(fmt: str, index: int, labeled: bool) -> list[str]:
    """File names of shard `index` in format `fmt`, data file first."""
    return format_named(fmt).files(index, labeled)


def encode(fmt: str, index: int, images: torch.Tensor, labels: torch.Tensor, labeled: bool) -> dict[str, bytes]:
    """{file name: bytes} for one shard. images uint8 [N, C, H, W] on CPU, labels int64 [N]."""
    return format_named(fmt).encode(index, images, labels, labeled)


def decode(fmt: str, files: dict[str, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, C, H, W], labels int64 [N]) from a shard's {file name: bytes}."""
    return format_named(fmt).decode(files)


def strings_format(fmt: str) -> ShardFormat:
    """The registered format `fmt` when it can hold strings (bad input otherwise)."""
    shard_format = format_named(fmt)
    if not shard_format.holds_strings:
        strings_formats = " or ".join(name for name, f in FORMATS.items() if f.holds_strings)
        raise BadInput(f"format={fmt} holds single digits only: use format={strings_formats} for strings")
    return shard_format


def encode_strings(fmt: str, index: int, batch) -> dict[str, bytes]:
    """{file name: bytes} for one shard of strings (a job.data.strings.StringBatch)."""
    return strings_format(fmt).encode_strings(index, batch)


def decode_strings(fmt: str, files: dict[str, bytes]) -> list[tuple[torch.Tensor, str, list[list[int]]]]:
    """[(image uint8 [C, H, own width], text, boxes)] of a shard of strings."""
    return strings_format(fmt).decode_strings(files)


class ShardItems:
    """Random access to one shard's items: `labels` (int64 [N], single digits) and
    item(j) -> (image, label) or (image, text, boxes), as the shard's decoder gives them."""

    labels: torch.Tensor

    def item(self, j: int) -> tuple:
        raise NotImplementedError


class DecodedItems(ShardItems):
    """A shard decoded whole: digits as two tensors, strings as a list of items."""

    def __init__(self, fmt: str, files: dict[str, bytes], strings: bool):
        self.strings = strings
        if strings:
            self.items = decode_strings(fmt, files)
        else:
            self.images, self.labels = decode(fmt, files)

    def item(self, j: int) -> tuple:
        return self.items[j] if self.strings else (self.images[j], int(self.labels[j]))


def read_items(fmt: str, files: dict[str, bytes], strings: bool) -> ShardItems:
    """Random access to a shard held in memory as {file name: bytes}: lazily decoded where
    the format allows it (a tar's PNGs one by one), else decoded whole."""
    lazy = format_named(fmt).read_items
    return lazy(files, strings) if lazy is not None else DecodedItems(fmt, files, strings)


# ----------------------------------------------------------------------------- safetensors


def _safetensors_files(index: int, labeled: bool) -> list[str]:
    return [f"shard-{index:06d}.safetensors"]


def _safetensors_encode(index: int, images: torch.Tensor, labels: torch.Tensor, labeled: bool) -> dict[str, bytes]:
    return {_safetensors_files(index, labeled)[0]: st_save({"images": images.contiguous(),
                                                           "labels": labels.contiguous()})}


def _safetensors_decode(files: dict[str, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = st_load(files[sorted(files)[0]])
    return tensors["images"], tensors["labels"]


def _safetensors_encode_strings(index: int, batch) -> dict[str, bytes]:
    tensors = {"images": batch.images, "widths": batch.widths, "labels": batch.labels, "lengths": batch.lengths,
               "boxes": batch.boxes}
    return {_safetensors_files(index, True)[0]: st_save({k: v.contiguous() for k, v in tensors.items()})}


def _safetensors_decode_strings(files: dict[str, bytes]) -> list[tuple[torch.Tensor, str, list[list[int]]]]:
    t = st_load(files[sorted(files)[0]])
    out = []
    for i in range(t["images"].shape[0]):
        n = int(t["lengths"][i])
        text = "".join(str(int(d)) for d in t["labels"][i, :n])
        out.append((t["images"][i, :, :, : int(t["widths"][i])], text, t["boxes"][i, :n].tolist()))
    return out


class _SafetensorsItems(ShardItems):
    """A safetensors shard opened with safe_open (memory-mapped): an item reads only its rows."""

    def __init__(self, path: str, strings: bool):
        self.file = safe_open(path, framework="pt")
        self.images = self.file.get_slice("images")
        self.labels = self.file.get_tensor("labels")
        self.strings = strings
        if strings:
            self.widths, self.lengths, self.boxes = (self.file.get_tensor(k) for k in ("widths", "lengths", "boxes"))

    def item(self, j: int) -> tuple:
        image = self.images[j : j + 1][0]
        if not self.strings:
            return image, int(self.labels[j])
        n = int(self.lengths[j])
        text = "".join(str(int(d)) for d in self.labels[j, :n])
        return image[:, :, : int(self.widths[j])], text, self.boxes[j, :n].tolist()


# ----------------------------------------------------------------------------- idx


_IDX_DTYPE_CODE = {np.dtype(np.uint8): 0x08}


def _idx_files(index: int, labeled: bool) -> list[str]:
    stem = f"shard-{index:06d}"
    return [f"{stem}-images-idx3-ubyte.gz"] + ([f"{stem}-labels-idx1-ubyte.gz"] if labeled else [])


def _idx_encode(index: int, images: torch.Tensor, labels: torch.Tensor, labeled: bool) -> dict[str, bytes]:
    names = _idx_files(index, labeled)
    out = {names[0]: _gzip(_idx_bytes(images.numpy() if images.shape[1] > 1 else images[:, 0].numpy()))}
    if labeled:
        out[names[1]] = _gzip(_idx_bytes(labels.to(torch.uint8).numpy()))
    return out


def _idx_decode(files: dict[str, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    names = sorted(files)
    image_name = next(n for n in names if "-images-" in n)
    images = torch.from_numpy(_read_idx(gzip.decompress(files[image_name])).copy())
    if images.ndim == 3:
        images = images[:, None]
    label_name = next((n for n in names if "-labels-" in n), None)
    if label_name is None:
        labels = torch.full((images.shape[0],), NO_LABEL, dtype=torch.int64)
    else:
        labels = torch.from_numpy(_read_idx(gzip.decompress(files[label_name])).astype(np.int64))
    return images, labels


def _idx_bytes(array: np.ndarray) -> bytes:
    """MNIST idx: magic (0, 0, dtype code, ndim), big-endian int32 dims, then the data."""
    header = struct.pack(">BBBB", 0, 0, _IDX_DTYPE_CODE[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def _read_idx(data: bytes) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BadInput("not an idx file of unsigned bytes (wrong magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise BadInput(f"idx file is truncated or padded: {len(body)} bytes of data for dims {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- webdataset


def _png(image: np.ndarray) -> bytes:
    """[C, H, W] uint8 -> PNG bytes (grey or RGB)."""
    mode_image = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    mode_image.save(buf, format="PNG", compress_level=1)  # fast; digits compress well anyway
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _webdataset_files(index: int, labeled: bool) -> list[str]:
    return [f"shard-{index:06d}.tar"]


def _webdataset_encode(index: int, images: torch.Tensor, labels: torch.Tensor, labeled: bool) -> dict[str, bytes]:
    return {_webdataset_files(index, labeled)[0]: _encode_tar(index, images, labels)}


def _webdataset_decode(files: dict[str, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    return _decode_tar(files[sorted(files)[0]])


def _webdataset_encode_strings(index: int, batch) -> dict[str, bytes]:
    buf = io.BytesIO()
    array = batch.images.numpy()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for j, text in enumerate(batch.texts):
            key = f"{index:06d}_{j:06d}"
            _add(tar, f"{key}.png", _png(array[j, :, :, : int(batch.widths[j])]))
            _add(tar, f"{key}.txt", text.encode())
            boxes = batch.boxes[j, : len(text)].tolist()
            _add(tar, f"{key}.json", json.dumps({"text": text, "boxes": boxes}, separators=(",", ":")).encode())
    return {_webdataset_files(index, True)[0]: buf.getvalue()}


def _webdataset_decode_strings(files: dict[str, bytes]) -> list[tuple[torch.Tensor, str, list[list[int]]]]:
    items: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(files[sorted(files)[0]]), mode="r") as tar:
        for member in tar.getmembers():
            if member.isfile():
                key, _, ext = member.name.partition(".")
                items.setdefault(key, {})[ext] = tar.extractfile(member).read()
    out = []
    for key in sorted(items):
        array = np.array(Image.open(io.BytesIO(items[key]["png"])))
        image = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        meta = json.loads(items[key]["json"])
        out.append((image, meta["text"], meta["boxes"]))
    return out


class _TarItems(ShardItems):
    """A webdataset tar in memory, indexed once: item(j) decodes only the j-th key's PNG."""

    def __init__(self, files: dict[str, bytes], strings: bool):
        self.data, self.strings = memoryview(files[sorted(files)[0]]), strings
        members: dict[str, dict[str, tuple[int, int]]] = {}  # key -> {ext: (offset, size)}
        with tarfile.open(fileobj=io.BytesIO(files[sorted(files)[0]]), mode="r") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {})[ext] = (member.offset_data, member.size)
        self.members = [members[key] for key in sorted(members)]
        if not strings:
            self.labels = torch.tensor([int(self._payload(m, "cls")) for m in self.members], dtype=torch.int64)

    def _payload(self, member: dict[str, tuple[int, int]], ext: str) -> bytes:
        offset, size = member[ext]
        return bytes(self.data[offset : offset + size])

    def item(self, j: int) -> tuple:
        member = self.members[j]
        array = np.array(Image.open(io.BytesIO(self._payload(member, "png"))))
        image = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        if not self.strings:
            return image, int(self.labels[j])
        meta = json.loads(self._payload(member, "json"))
        return image, meta["text"], meta["boxes"]


def _encode_tar(index: int, images: torch.Tensor, labels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    array = images.numpy()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for j in range(array.shape[0]):
            key = f"{index:06d}_{j:06d}"
            _add(tar, f"{key}.png", _png(array[j]))
            _add(tar, f"{key}.cls", str(int(labels[j])).encode())
    return buf.getvalue()


def _decode_tar(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = {}, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            payload = tar.extractfile(member).read()
            if ext == "png":
                array = np.array(Image.open(io.BytesIO(payload)))
                images[key] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            elif ext == "cls":
                labels[key] = int(payload)
    keys = sorted(images)
    return (torch.from_numpy(np.stack([images[k] for k in keys])),
            torch.tensor([labels[k] for k in keys], dtype=torch.int64))


# ----------------------------------------------------------------------------- registered formats

# Every format `sample format=` accepts and `evaluate` reads back. Adding one: its codecs
# above, one entry here, and its layout in this module's docstring.
FORMATS: dict[str, ShardFormat] = {
    f.name: f
    for f in (
        ShardFormat("safetensors", _safetensors_files, _safetensors_encode, _safetensors_decode,
                    _safetensors_encode_strings, _safetensors_decode_strings, _SafetensorsItems),
        ShardFormat("webdataset", _webdataset_files, _webdataset_encode, _webdataset_decode,
                    _webdataset_encode_strings, _webdataset_decode_strings, read_items=_TarItems),
        ShardFormat("idx", _idx_files, _idx_encode, _idx_decode),
    )
}

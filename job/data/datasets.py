"""The datasets a job can train on, and how each is read into one uint8 tensor.

`data.name` picks a row of CATALOG. Every reader returns the whole split as uint8
[N, C, H, W] plus int64 labels; `data.load_split` does the locking, S3 staging and the move
to the device. torchvision does the reading (and the download when online and the files
are missing); files already in `data.root` are used offline.

A flat folder of idx files (how Debian ships Fashion-MNIST, how ../shared/datasets/mnist
holds MNIST, what `data push` writes) is decompressed once into torchvision's layout in
the cache, so torchvision finds them without going online.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import torch

from job.core.errors import BadInput

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10  # every catalogue dataset but imagefolder (which has one per class folder)
IMAGEFOLDER_DEFAULT_SIZE = 28  # an image folder has no native size; digits are MNIST-sized


@dataclass(frozen=True)
class Dataset:
    name: str
    torchvision_class: str  # also the folder torchvision keeps its files in
    channels: int | None  # None: from the images (imagefolder)
    image_size: int | None  # native side length; None: data.image_size or 28 (imagefolder)
    idx_files: tuple[str, ...] = ()  # the idx files a flat folder may hold, if any
    flat_files: tuple[str, ...] = ()  # files torchvision keeps directly in its root, if any
    digits: bool = True  # its classes are the digits 0-9 (the autoencoder's inputs); False: other images
    image_folder: bool = False  # <root>/<class>/<image>: classes, channels and size come from the files
    split: tuple[str, str] | None = None  # torchvision's split= for (train, test); None: train=True/False
    subset: str | None = None  # torchvision's split= naming the subset (EMNIST's "digits")
    labels_attribute: str = "targets"  # where the torchvision dataset keeps its labels
    transposed: bool = False  # the files store each image transposed (EMNIST)


CATALOG: dict[str, Dataset] = {
    "mnist": Dataset("mnist", "MNIST", 1, 28, IDX_FILES),
    "fashion-mnist": Dataset("fashion-mnist", "FashionMNIST", 1, 28, IDX_FILES, digits=False),
    "kmnist": Dataset("kmnist", "KMNIST", 1, 28, IDX_FILES, digits=False),
    "emnist-digits": Dataset("emnist-digits", "EMNIST", 1, 28, tuple(f"emnist-digits-{n}" for n in IDX_FILES),
                             subset="digits", transposed=True),
    "usps": Dataset("usps", "USPS", 1, 16, flat_files=("usps.bz2", "usps.t.bz2")),
    "svhn": Dataset("svhn", "SVHN", 3, 32, flat_files=("train_32x32.mat", "test_32x32.mat"),
                    split=("train", "test"), labels_attribute="labels"),
    "imagefolder": Dataset("imagefolder", "ImageFolder", None, None, image_folder=True),
}


def named(name: str) -> Dataset:
    """The catalogue row of data.name=`name` (bad input naming the choices otherwise)."""
    if name not in CATALOG:
        raise BadInput(f"data.name={name!r} is not supported: use one of {', '.join(CATALOG)}")
    return CATALOG[name]


def native_size(name: str) -> int:
    return CATALOG[name].image_size or IMAGEFOLDER_DEFAULT_SIZE


def dataset_folder(root: str, dataset: Dataset) -> str:
    """The folder holding `dataset` under a local data.root: `<root>/<name>` when the root is
    a parent of several datasets (mnist/, fashion-mnist/, ...; as torchvision accepts
    `<root>/MNIST/raw`), else the root itself. An image folder's root is always itself."""
    nested = os.path.join(root, dataset.name)
    if not dataset.image_folder and os.path.isdir(nested):
        return nested
    return root


# ----------------------------------------------------------------------------- idx files


def find_idx_files(root: str, dataset: Dataset) -> dict[str, str]:
    """{idx name: local path} for the dataset's idx files under `root` (flat or in
    torchvision's layout, gzip or not); missing files are left out."""
    found = {}
    for folder in (root, os.path.join(root, dataset.torchvision_class, "raw")):
        for name in dataset.idx_files:
            for candidate in (name + ".gz", name):
                path = os.path.join(folder, candidate)
                if name not in found and os.path.isfile(path):
                    found[name] = path
    return found


def torchvision_root(root: str, dataset: Dataset, cache: str) -> str:
    """A root in torchvision's layout (<root>/<Class>/raw/<idx files>) for the files under
    `root`. Flat folders are decompressed once into `cache`. Call with the dataset lock held."""
    if not dataset.idx_files or os.path.isdir(os.path.join(root, dataset.torchvision_class, "raw")):
        return root
    sources = find_idx_files(root, dataset)
    if len(sources) < len(dataset.idx_files):
        return root  # torchvision will download here when online
    # Keyed by the sources' sizes and times too: a replaced or repaired file is staged
    # afresh instead of meeting the copy of its old self.
    stats = {name: os.stat(src) for name, src in sources.items()}
    stamp = hashlib.sha256(json.dumps(
        sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats.items())
    ).encode()).hexdigest()[:12]
    stage = os.path.join(cache, "staged", os.path.abspath(root).strip("/").replace("/", "_") + "-" + stamp)
    raw = os.path.join(stage, dataset.torchvision_class, "raw")
    os.makedirs(raw, exist_ok=True)
    for name, src in sources.items():
        dst = os.path.join(raw, name)
        if os.path.exists(dst):
            continue
        opener = gzip.open if src.endswith(".gz") else open
        tmp = dst + ".partial"
        try:
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, EOFError) as e:
            raise BadInput(f"{src} cannot be read as an idx file ({e})") from None
        os.replace(tmp, dst)  # whole file or nothing, for the next process to trust
    return stage


# ----------------------------------------------------------------------------- readers


def read_torchvision(dataset: Dataset, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, C, H, W] and int64 labels of a torchvision dataset (downloads when online)."""
    import torchvision.datasets as tvd  # heavy import, only when data is needed

    cls = getattr(tvd, dataset.torchvision_class)
    if dataset.split is not None:
        ds = cls(root, split=dataset.split[0 if train else 1], download=True)
    elif dataset.subset is not None:
        ds = cls(root, split=dataset.subset, train=train, download=True)
    else:
        ds = cls(root, train=train, download=True)
    images = torch.as_tensor(ds.data)
    labels = torch.as_tensor(getattr(ds, dataset.labels_attribute), dtype=torch.int64)
    if dataset.transposed:
        images = images.transpose(1, 2)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.to(torch.uint8).contiguous(), labels


def image_folder_roots(root: str) -> tuple[str, str, bool]:
    """(train root, test root, has a separate test split) of an image folder: <root>/train
    and <root>/test (or val) when both exist, else the whole folder for both."""
    train, test = os.path.join(root, "train"), None
    for name in ("test", "val"):
        if os.path.isdir(os.path.join(root, name)):
            test = os.path.join(root, name)
            break
    if os.path.isdir(train) and test:
        return train, test, True
    return root, root, False


def _visible(path: str) -> bool:
    return not any(part.startswith(".") for part in path.split(os.sep))


def _image_files(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(path, label)], class names) of <root>/<class>/<file>: torchvision's ImageFolder
    rule (class folders in sorted order), but every visible file counts, image or not."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise BadInput(f"data.root={root!r} is not a folder of class folders (data.name=imagefolder)")
    try:
        folder = ImageFolder(root, loader=lambda path: path, is_valid_file=_visible)
    except (FileNotFoundError, OSError) as e:
        raise BadInput(f"data.root={root!r} is not a usable image folder: {e}") from None
    return folder.samples, list(folder.classes)


def image_folder_classes(root: str) -> list[str]:
    return _image_files(root)[1]


def image_folder_class_counts(root: str) -> list[int]:
    """How many visible files each class folder of <root>/<class>/... holds, in label order
    (the class folders sorted, as ImageFolder numbers them); an empty class counts 0."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))
    if not classes:
        raise BadInput(f"{root} holds no class folders (<root>/<class>/<image>)")
    return [sum(len([f for f in files if _visible(f)]) for _, _, files in os.walk(os.path.join(root, c)))
            for c in classes]


def _open_image(path: str):
    """A PIL image, or a BadInput naming the file: silently training on fewer images than
    the user put there is worse than stopping."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInput(f"{path} in data.root is not a readable image ({type(e).__name__}: {e}); "
                       "remove it or move it out of the class folders") from None


def image_folder_channels(roots: list[str]) -> int:
    """1 when every image under `roots` is greyscale, else 3 (reads headers only)."""
    grey_modes = {"1", "L", "LA", "I", "I;16", "F"}
    for root in roots:
        for path, _ in _image_files(root)[0]:
            with _open_image(path) as img:
                if img.mode not in grey_modes:
                    return 3
    return 1


def read_image_folder(root: str, image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 [N, C, S, S], labels and class names of <root>/<class>/<image>, each image
    cropped to a centred square and resized to `image_size`."""
    from PIL import Image, ImageOps

    samples, classes = _image_files(root)
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path, _ in samples:
        with _open_image(path) as img:
            try:
                fitted = ImageOps.fit(img.convert(mode), (image_size, image_size), Image.Resampling.BILINEAR)
            except (OSError, ValueError) as e:  # a truncated file fails only when decoded
                raise BadInput(f"{path} in data.root is not a readable image ({type(e).__name__}: {e}); "
                               "remove it or move it out of the class folders") from None
        arrays.append(torch.frombuffer(bytearray(fitted.tobytes()), dtype=torch.uint8))
    images = torch.stack(arrays).view(len(arrays), image_size, image_size, channels).permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images.contiguous(), labels, classes

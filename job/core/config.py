"""Typed job configuration: defaults in one place, presets as YAML, strict overrides.

A config is built in three layers, each checked the same way:
    dataclass defaults  <-  preset or YAML file (--config)  <-  key=value overrides
An unknown key, a value of the wrong type or one out of range raises BadInput with one
line that names the key and what is allowed. Presets live in job/configs/<name>.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from job.core.errors import BadInput
from job.core.kinds import KINDS

# The model.kind values: the registered kinds (job/core/kinds.py), in registration order.
KindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]


def _bounded(default: Any, *, min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field whose value must lie in [min, max] (checked on load)."""
    return field(default=default, metadata={"min": min, "max": max})


# precision= values (job/core/precision.py says what each does); generation has no fp16.
TrainPrecision = Literal["auto", "fp32", "no", "tf32", "bf16", "fp16"]
GenerationPrecision = Literal["auto", "fp32", "no", "tf32", "bf16"]


def _precision(names: Any) -> Any:
    """A precision field: its default is $DIGITS_PRECISION when set (for every command, in
    the image or not), else auto; a key given in the config or on the command line wins."""
    choices = typing.get_args(names)

    def default() -> str:
        value = os.environ.get("DIGITS_PRECISION", "").strip().lower() or "auto"
        if value not in choices:
            raise BadInput(f"DIGITS_PRECISION={value!r} is not one of {', '.join(choices)}: fix it or unset it")
        return value

    return field(default_factory=default)


# ----------------------------------------------------------------------------- schemas


@dataclass
class DataConfig:
    # Dataset (read through torchvision): mnist, fashion-mnist, kmnist, emnist-digits, usps
    # (16x16), svhn (RGB 32x32), or imagefolder: <root>/<class>/<image> of any size and
    # channel count (<root>/train and <root>/test when both exist, else one folder for both).
    name: Literal["mnist", "fashion-mnist", "kmnist", "emnist-digits", "usps", "svhn", "imagefolder"] = "mnist"
    # Folder (or s3:// prefix from `data push`) holding the dataset files. Defaults to
    # $DIGITS_DATA_DIR, else ./data. torchvision downloads into it when online and the
    # files are missing; files already there are used offline.
    root: str = field(default_factory=lambda: os.environ.get("DIGITS_DATA_DIR", "data"))
    # Side length the model sees (images are resized to it); null: the dataset's native
    # size (28 for an image folder), or 64 for model.arch=dcgan64.
    image_size: int | None = _bounded(None, min=8, max=512)
    # imagefolder: 1 (grey) or 3 (RGB); null: 1 when every image is greyscale, else 3.
    channels: int | None = _bounded(None, min=1, max=3)
    # A long tail cut from the training split (test splits stay whole): none, exp<ratio>
    # (exp100: class c keeps base x 100^(-c/9)) or step:<classes>@<fraction> (step:2,5,8@0.01);
    # base is the smallest class's count (job/data/profiles.py).
    profile: str = "none"
    # Seed of which digits a long-tail profile keeps: the same seed, the same digits.
    profile_seed: int = _bounded(0, min=0, max=2**63 - 1)


@dataclass
class ModelConfig:
    # What is trained: dcgan (a generator), autoencoder (handwritten digit -> the same
    # digit in a printed font, for `job transform`), mean (the per-class mean image: the
    # seed project's baseline, sampled like a generator) or classifier (the evaluation network).
    # Each kind reads only some of the keys below (job/core/kinds.py); setting one it does not
    # read is refused.
    kind: KindName = "dcgan"
    # dcgan only. dcgan28: dense projection to S/4 x S/4 + 2 transposed convs (fast; named
    # for MNIST's 28, runs at any data.image_size that is a multiple of 4: 28, 32, 48, 64).
    # dcgan64: the classic pytorch/examples DCGAN at 64x64 (images resized to 64).
    arch: Literal["dcgan28", "dcgan64"] = "dcgan28"
    # dcgan: labels go into G (embedding concatenated to z) and D (projection head).
    # mean: one mean image per class (true) or one of all images (false).
    conditional: bool = True
    # dcgan: length of the noise vector z. autoencoder: length of the code between
    # encoder and decoder.
    latent_dim: int = _bounded(100, min=1, max=4096)
    # Base channel width of the generator (ngf) and discriminator (ndf).
    g_width: int = _bounded(64, min=4, max=1024)
    d_width: int = _bounded(64, min=4, max=1024)
    # dcgan: give D a minibatch standard-deviation feature map, so it can tell a batch of
    # look-alike digits from a varied one (counters mode dropping; unconditional models).
    minibatch_std: bool = False
    # classifier, autoencoder: base channel width. classifier: size of the feature layer
    # (FID's space).
    width: int = _bounded(32, min=4, max=1024)
    feature_dim: int = _bounded(128, min=2, max=4096)
    # autoencoder: the printed font(s) of the targets: TTF/OTF paths, comma-separated
    # (one output channel per font), or "auto": DejaVu Serif or Liberation Serif when
    # installed, else Pillow's built-in font. Nothing is downloaded.
    font: str = "auto"
    # mean: standard deviation of the Gaussian noise added to every pixel when sampling,
    # in grey levels (0-255); 0 samples the mean images themselves.
    pixel_noise: float = _bounded(0.0, min=0.0, max=255.0)


@dataclass
class TrainConfig:
    RENAMED = {"mixed_precision": "precision"}  # old key -> the key it sets now (not a field)

    # Optimizer steps to train in total (a resumed run stops at the same step).
    steps: int = _bounded(5000, min=1)
    # Images per process per step (the global batch is this times the number of processes).
    batch_size: int = _bounded(64, min=1, max=65536)
    # classifier: peak learning rate (warm-up, then cosine to 0), AdamW weight decay, and
    # random affine jitter of the training images (rotation, shift, scale).
    lr: float = _bounded(2e-3, min=0.0, max=1.0)
    weight_decay: float = _bounded(1e-4, min=0.0, max=1.0)
    augment: bool = True
    # dcgan: Adam learning rates and betas for G and D (DCGAN paper values).
    lr_g: float = _bounded(2e-4, min=0.0, max=1.0)
    lr_d: float = _bounded(2e-4, min=0.0, max=1.0)
    beta1: float = _bounded(0.5, min=0.0, max=1.0)
    beta2: float = _bounded(0.999, min=0.0, max=1.0)
    # Decay of the exponential moving average of G that is sampled and exported.
    ema_decay: float = _bounded(0.999, min=0.0, max=1.0)
    # Precision (train.mixed_precision is its old name). auto: on a CPU, measured (a second
    # or two of training steps in fp32 and bf16, cached per CPU, model and batch size); on a
    # GPU bf16 where it is native. fp32 (or no): fp32, TF32 off; tf32: TF32 matmuls on GPUs;
    # fp16: one GradScaler per optimizer, fp32 on a CPU. The first lines say which and why.
    precision: TrainPrecision = _precision(TrainPrecision)
    # Keep activations channels-last (NHWC): faster convolutions on CPUs and tensor cores.
    channels_last: bool = True
    # Every N steps: one metrics.jsonl line, a sample grid PNG, a checkpoint.
    log_every: int = _bounded(50, min=1)
    sample_every: int = _bounded(500, min=1)
    checkpoint_every: int = _bounded(1000, min=1)
    # Complete checkpoints kept; older ones are deleted (meta.json first).
    keep_checkpoints: int = _bounded(3, min=1)
    # Progress on the main process: a bar on a terminal, a plain line every 30 s in a log.
    progress: bool = True


@dataclass
class RunConfig:
    # Where the run writes config, metrics, grids, checkpoints and generator.safetensors.
    dir: str = "runs/default"


@dataclass
class TrainJob:
    """`job train`: everything one training run needs."""

    # Base seed; every rank derives its own streams from it. Never random by default.
    seed: int = _bounded(0, min=0, max=2**63 - 1)
    # auto: continue from the newest complete checkpoint in run.dir if there is one;
    # never: start fresh (refuses a run.dir that already has checkpoints);
    # or the path/URI of one checkpoint folder to start from.
    resume: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self) -> None:
        check_data(self.data)
        from job.data.datasets import native_size  # torch-heavy; only once a config is checked

        m, size, kind = self.model, self.data.image_size, KINDS[self.model.kind]
        fixed = kind.fixed_sizes.get(m.arch) if kind.uses("model.arch") else None
        if fixed is not None:
            if size not in (None, fixed):
                raise BadInput(f"data.image_size={size} does not fit model.arch={m.arch} ({fixed}x{fixed} only): "
                               f"set data.image_size={fixed} or null, or use another model.arch")
            size = fixed
        size = size or native_size(self.data.name)
        multiple = kind.size_multiple
        if size % multiple:
            raise BadInput(f"data.image_size={size} does not fit model.kind={m.kind}: it must be a multiple of "
                           f"{multiple} (e.g. 28, 32, 48, 64)")
        self.data.image_size = size

    def check_used(self, given: dict[str, str]) -> None:
        """Refuse model./train. keys that were set (in `given`: key -> where) but that the
        chosen kind never reads: they would be silently ignored."""
        kind = KINDS[self.model.kind]
        unused: dict[str, list[str]] = {}
        for key, where in given.items():
            if not kind.uses(key):
                unused.setdefault(where, []).append(key)
        if not unused:
            return
        where, keys = next(iter(unused.items()))
        sections = {k.split(".")[0] + "." for k in keys}
        reads = ", ".join(k for k in kind.keys if k.startswith(tuple(sections))) or "none of " + " or ".join(
            sorted(s + "*" for s in sections))
        raise BadInput(f"{where} sets {', '.join(keys)}, which model.kind={kind.name} does not use: remove "
                       f"{'it' if len(keys) == 1 else 'them'} ({kind.name} reads {reads})")


def check_data(data: DataConfig) -> None:
    from job.data.datasets import CATALOG  # the catalogue (imports torch); only once a config is checked
    from job.data.profiles import parse

    parse(data.profile)  # a bad profile is refused before anything is read or written

    if data.channels is not None and not CATALOG[data.name].image_folder:
        raise BadInput(f"data.channels is for data.name=imagefolder; {data.name} has fixed channels: set it to null")
    if data.channels == 2:
        raise BadInput("data.channels=2 is not allowed: use 1 (grey), 3 (RGB) or null")


@dataclass
class DataJob:
    """`job data push <name> <dest>`: where the dataset is read from (data.root)."""

    data: DataConfig = field(default_factory=DataConfig)

    def check(self) -> None:
        check_data(self.data)


@dataclass
class StringsConfig:
    """`sample layout=strings`: how digits are set into a string image (see job/data/strings.py)."""

    # Drawn texts (when neither text nor texts is given): digits per string, "6" or "4-8",
    # and the digit distribution: uniform or ten weights for 0..9 ("1,1,1,1,1,1,1,1,1,2").
    length: str = "6"
    digits: str = "uniform"
    # Image height in pixels, and width: 0 = as wide as the string (a shard pads its images
    # to its widest; each image's own width is stored), or a fixed width (longer strings are
    # scaled down to fit, shorter ones padded on the right).
    height: int = _bounded(28, min=8, max=256)
    width: int = _bounded(0, min=0, max=8192)
    # Ranges "low,high" drawn per digit: the gap to the next digit in pixels (negative: the
    # digits overlap, by at most 4 and a quarter of the narrower one), the size relative to
    # the height, the slant (horizontal shift per unit of height; + leans right); and the
    # baseline jitter, +-pixels.
    spacing: str = "-2,3"
    scale: str = "0.8,1.0"
    slant: str = "-0.15,0.15"
    jitter: float = _bounded(1.5, min=0.0, max=32.0)


@dataclass
class SampleJob:
    """`job sample`: bulk-generate labeled digits from a generator file into shards."""

    # The generator file to sample from (<run>/generator.safetensors, local or s3://).
    generator: str = ""
    # Number of digits in total, over all shards.
    count: int = _bounded(0, min=1)
    # Folder or s3:// prefix for the shards, their records and manifest.json.
    out: str = ""
    # safetensors (images uint8 [N,C,H,W] + labels), webdataset (tar of png + cls), idx (MNIST
    # gzip): the formats registered in job/shardsets/formats.py (FORMATS).
    format: str = "safetensors"
    # Digits per shard (the last shard holds the rest). Shard i depends only on
    # (generator, seed, i, shard_size, format), never on how many processes ran.
    shard_size: int = _bounded(10000, min=1, max=10_000_000)
    # balanced: each shard holds every class equally (then shuffled); uniform: i.i.d.
    # classes; or a comma list of classes to draw from, balanced, e.g. "3,5,8".
    # classifier (unconditional generators): each digit is labelled by `classifier` (its
    # most likely class, kept when at least min_confidence), and per-class quotas keep
    # every shard exactly balanced like `balanced`.
    labels: str = "balanced"
    # Base seed: shard i's noise and labels are drawn from a stream seeded by (seed, i).
    seed: int = _bounded(0, min=0, max=2**63 - 1)
    # Digits per forward pass (a shard is generated in chunks of this many). 1024 keeps
    # a CPU run near 1 GB; on a GPU use 8192 or more.
    batch_size: int = _bounded(1024, min=1, max=1_000_000)
    # Precision of the forward pass: fp32 (or no), tf32 (GPUs), bf16, or auto: on a CPU
    # measured (the generator's forward in fp32 and bf16 at this batch size, cached), on a GPU
    # bf16 where native (see train.precision). The bytes depend on it, so it is part of the
    # plan: a worker or a rerun of an `out` that already has a plan takes the plan's.
    precision: GenerationPrecision = _precision(GenerationPrecision)
    # Threads that encode and upload shards while the device generates the next ones.
    writers: int = _bounded(2, min=1, max=64)
    # Shards generated but not yet written, at most (bounds memory: not `count`).
    queue: int = _bounded(4, min=1, max=1024)
    # Total number of workers (Kubernetes Indexed Job completions); 0 takes
    # $DIGITS_NUM_WORKERS, else 1. This pod's index comes from $JOB_COMPLETION_INDEX.
    workers: int = _bounded(0, min=0, max=100_000)
    # Progress on the main process: a bar on a terminal, a plain line every 30 s in a log.
    progress: bool = True
    # Keep only digits the classifier recognizes as their requested class (labels=classifier:
    # as any class) with at least this probability (0 keeps all). Rejected digits are redrawn
    # from the shard's own stream, so counts and bytes stay exact; the manifest records the
    # acceptance rate.
    min_confidence: float = _bounded(0.0, min=0.0, max=1.0)
    # The judge of min_confidence and of labels=classifier: builtin:mnist (shipped) or a
    # classifier.safetensors URI.
    classifier: str = "builtin:mnist"
    # digits: one digit per image. strings: images of digit strings (numbers) with their
    # texts and per-digit boxes, each digit from the generator with its own noise.
    layout: Literal["digits", "strings"] = "digits"
    # strings: the text of every image (e.g. 2026), or a file/URI of strings, one per line,
    # used in order and repeated to reach `count`; neither: texts are drawn (strings.length,
    # strings.digits) from each shard's stream.
    text: str | None = None
    texts: str = ""
    strings: StringsConfig = field(default_factory=StringsConfig)
    # Top up a real labeled set: draw of each class exactly what brings it to balance_to
    # (0: its largest class's count); count is then their sum and is left out. The set: a
    # shard set (its manifest), a local image folder (<root>/<class>/<image>), or data: the
    # training split data.* describes, data.profile included. Recorded in the manifest.
    balance: str = ""
    balance_to: int = _bounded(0, min=0, max=100_000_000)
    # The real set of balance=data (its name, root, profile and profile_seed).
    data: DataConfig = field(default_factory=DataConfig)

    def check(self) -> None:
        for key in ("generator", "out"):
            if not getattr(self, key):
                raise BadInput(f"{key} is required: sample ... generator=<run>/generator.safetensors count=N out=<URI>")
        if self.balance:
            if self.count:
                raise BadInput("count= and balance= both set: balance= works out the count (what the real set lacks); "
                               "leave count out")
            from job.shardsets import layouts  # the layout table (imports torch)

            if self.labels != "balanced" or layouts.named(self.layout).items_are_strings:
                raise BadInput("balance= draws single digits of the classes the real set lacks: leave labels= and "
                               "layout= at their defaults")
            check_data(self.data)
        elif self.count == 0:
            raise BadInput("count is required and must be >= 1, e.g. count=60000")
        from job.shardsets.formats import format_named  # the format table (imports torch)

        format_named(self.format)
        from job.shardsets import layouts  # the layout table: what each layout's own keys must be

        layouts.named(self.layout).function("check_config")(self)
        if self.labels not in LABEL_RULES:
            parts = [p.strip() for p in self.labels.split(",")]
            if not all(p.isdigit() for p in parts) or not parts:
                raise BadInput(
                    f"labels={self.labels!r} is not allowed: use {', '.join(LABEL_RULES)} or a comma list of "
                    "classes like 3,5,8"
                )

    def label_choices(self) -> list[int] | None:
        return label_choices(self.labels)


# The `labels=` rules besides a comma list of classes.
LABEL_RULES = ("balanced", "uniform", "classifier")


def label_choices(labels: str) -> list[int] | None:
    """The classes of a `labels=` comma list, or None for a rule over all classes."""
    if labels in LABEL_RULES:
        return None
    return sorted({int(p) for p in labels.split(",")})


@dataclass
class TstrConfig:
    # Train-on-synthetic, test-on-real: digits a fresh classifier is trained on (0 skips
    # TSTR). The real row trains the same classifier on as many real digits.
    n: int = _bounded(10000, min=0, max=10_000_000)
    # Passes over those digits, and the batch size (the classifier-mnist recipe otherwise).
    epochs: float = _bounded(3.0, min=0.01, max=1000)
    batch_size: int = _bounded(128, min=1, max=65536)


@dataclass
class AugmentConfig:
    # The augmentation user's question: with k real labeled digits per class (of data's train
    # split), how much better is a classifier trained on them plus these synthetic digits?
    # 0 skips it. The report then holds both test accuracies and the lift (job/evaluation/lift.py).
    k: int = _bounded(0, min=0, max=100_000)
    # Synthetic digits per real one: ratio x k x classes digits of the generator or set.
    ratio: float = _bounded(1.0, min=0.01, max=1000)
    # Repeats, each with its own real subset, initialisation and batch order (mean and spread).
    seeds: int = _bounded(3, min=1, max=100)
    # Classifier training steps (batch 128, the classifier-mnist recipe), the same for both.
    steps: int = _bounded(400, min=1, max=1_000_000)


@dataclass
class LongtailConfig:
    # The long-tail question (job/evaluation/longtail.py): the training split cut to this
    # profile (exp100, step:2,5,8@0.01; cut with data.profile_seed); a classifier trained on
    # it alone, with class-balanced oversampling, with loss reweighting, and topped up to
    # balance with the generator's digits (unfiltered, and filtered by the first one's own
    # classifier). none skips it. Needs a class-conditional generator.
    profile: str = "none"
    # Repeats, each with its own initialisation, batch order and synthetic digits.
    seeds: int = _bounded(3, min=1, max=100)
    # Classifier training steps per arm (batch tstr.batch_size), the same for every arm.
    steps: int = _bounded(1000, min=1, max=1_000_000)
    # The filtered arm keeps digits its judge gives at least this probability of their class.
    min_confidence: float = _bounded(0.9, min=0.0, max=1.0)


@dataclass
class EvaluateJob:
    """`job evaluate`: score a generator or a shard set against real data."""

    # What to score: a generator file (<run>/generator.safetensors) or a shard set folder
    # (with manifest.json, from `job sample`). Exactly one.
    generator: str = ""
    samples: str = ""
    # Digits scored for FID, IS, CAS, balance, precision/recall (and real digits compared).
    n: int = _bounded(10000, min=20, max=1_000_000)
    # Where report.json, report.md and grid.png go; empty: <generator's folder>/eval or
    # <samples>/eval.
    out: str = ""
    # The judge: builtin:mnist (shipped with the package) or a classifier.safetensors URI.
    classifier: str = "builtin:mnist"
    # The real data the generator is compared to (its train split; the test split for
    # the floor and for TSTR).
    data: DataConfig = field(default_factory=DataConfig)
    tstr: TstrConfig = field(default_factory=TstrConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    longtail: LongtailConfig = field(default_factory=LongtailConfig)
    # Reference row: class-means (the per-class mean image of the real train split: the
    # seed project's method, as `train model.kind=mean` makes it), none, or the URI of a
    # class-conditional generator file to compare against (a trained mean model, an older GAN).
    baseline: str = "class-means"
    # Neighbours that set the radius of each sample's ball for precision/recall.
    k: int = _bounded(3, min=1, max=100)
    # Seed of the generated digits (noise and labels) and of the real subsets.
    seed: int = _bounded(0, min=0, max=2**63 - 1)
    # Digits per forward pass.
    batch_size: int = _bounded(1000, min=1, max=1_000_000)
    # Precision while generating the digits to score (see sample precision=); the classifier
    # that scores them always runs in fp32, so reports from any machine compare.
    precision: GenerationPrecision = _precision(GenerationPrecision)

    def check(self) -> None:
        check_data(self.data)
        if bool(self.generator) == bool(self.samples):
            raise BadInput("pass exactly one of generator=<run>/generator.safetensors or samples=<shard folder>")
        if self.longtail.profile != "none":
            from job.data.profiles import parse

            parse(self.longtail.profile, "longtail.profile")
            if self.samples:
                raise BadInput("longtail.profile draws the digits each class lacks from a generator: pass "
                               "generator=, not samples=")


@dataclass
class TransformJob:
    """`job transform`: handwritten digit images -> printed digits, with an autoencoder."""

    # The autoencoder: builtin:mnist (shipped, trained on MNIST with DejaVu Serif targets)
    # or an autoencoder file (<run>/autoencoder.safetensors, local or s3://).
    generator: str = "builtin:mnist"
    # An image file, a folder of images (searched recursively), or an s3:// object or prefix.
    inputs: str = ""
    # Folder or s3:// prefix for one PNG per input, side-by-side.png and report.json.
    out: str = ""
    # Images per forward pass.
    batch_size: int = _bounded(256, min=1, max=100_000)
    # Rows of side-by-side.png (the first inputs, in name order).
    preview: int = _bounded(64, min=1, max=10_000)

    def check(self) -> None:
        for key in ("generator", "inputs", "out"):
            if not getattr(self, key):
                raise BadInput(f"{key} is required: transform inputs=<image|folder|URI> out=<folder|URI> "
                               "[generator=<run>/autoencoder.safetensors]")


# What each command's --config describes.
SCHEMAS: dict[str, type] = {"train": TrainJob, "data": DataJob, "sample": SampleJob, "evaluate": EvaluateJob,
                            "transform": TransformJob}


# ----------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    folder = resources.files("job") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_config_source(spec: str) -> tuple[dict, str]:
    """Return (mapping, description) for a preset name or a YAML file path."""
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        if not os.path.isfile(spec):
            raise BadInput(f"config file {spec!r} does not exist")
        try:
            with open(spec, encoding="utf-8") as f:
                text, where = f.read(), spec
        except UnicodeDecodeError as e:
            raise BadInput(f"config file {spec!r} is not UTF-8 text (byte {e.start}): is it the right file?") from None
        except OSError as e:
            raise BadInput(f"config file {spec!r} cannot be read ({e.strerror})") from None
    else:
        preset = resources.files("job") / "configs" / f"{spec}.yaml"
        if not preset.is_file():
            raise BadInput(
                f"unknown config preset {spec!r}{_did_you_mean(spec, preset_names())}: choose one of "
                f"{', '.join(preset_names())} "
                "or pass a path to a .yaml file"
            )
        text, where = preset.read_text(encoding="utf-8"), f"preset {spec}"
    try:
        data = yaml.safe_load(text)  # safe_load: no Python object tags, ever
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"{where} is not valid YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{where} must be a YAML mapping of config keys, not {type(data).__name__}")
    return data, where


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, from_text: bool) -> Any:
    """Check (YAML values) or parse (command-line text) `value` as type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_text and value.lower() in ("null", "none", "~"))):
            return None
        last_error = None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, from_text)
            except BadInput as e:
                last_error = e
        raise last_error  # type: ignore[misc]
    if origin is Literal:
        allowed = typing.get_args(tp)
        for choice in allowed:
            if value == choice or (from_text and str(choice) == value):
                return choice
        raise BadInput(f"{key}={value!r} is not allowed: use one of {', '.join(map(str, allowed))}")
    wrong = BadInput(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
    if tp is bool:
        if from_text:
            lowered = value.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise wrong
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if from_text:
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise wrong from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        if from_text:
            try:
                number = float(value)
            except ValueError:
                raise wrong from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise wrong
        # nan and inf parse as floats and slip past every range check (nan < lo is False).
        if not math.isfinite(number):
            raise BadInput(f"{key}={value} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    raise TypeError(f"config field {key} has unsupported type {tp!r}")  # a bug in a schema


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if value is None or (lo is None and hi is None):
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
        raise BadInput(f"{key}={value} is out of range: must be {bounds}")


def _fields(obj: Any) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(obj)}


def _set(obj: Any, path: list[str], value: Any, full_key: str, from_text: bool,
         given: dict[str, str] | None = None, where: str = "") -> None:
    """Set one key (a section from YAML sets each of its keys); `given` records the full key
    of every value set and `where` it came from."""
    fields = _fields(obj)
    name = path[0]
    renamed = getattr(type(obj), "RENAMED", {}).get(name)  # an old key name, still accepted
    if renamed is not None:
        prefix = full_key[: len(full_key) - len(".".join(path))]
        name, path = renamed, [renamed, *path[1:]]
        full_key = prefix + ".".join(path)
    if name not in fields:
        prefix = full_key[: len(full_key) - len(".".join(path))]
        valid = ", ".join(prefix + k for k in fields)
        hint = _did_you_mean(name, list(fields), prefix)
        raise BadInput(f"unknown config key {full_key!r}{hint}: valid keys here are {valid}")
    f, tp = fields[name]
    if dataclasses.is_dataclass(tp):
        if len(path) == 1:
            if from_text or not isinstance(value, dict):
                sub = ", ".join(f"{full_key}.{k}" for k in _fields(getattr(obj, name)))
                raise BadInput(f"{full_key} is a section, not a value: set one of {sub}")
            for k, v in value.items():
                _set(getattr(obj, name), [str(k)], v, f"{full_key}.{k}", from_text, given, where)
            return
        _set(getattr(obj, name), path[1:], value, full_key, from_text, given, where)
        return
    if len(path) > 1:
        parent = ".".join(full_key.split(".")[: -len(path) + 1])
        raise BadInput(f"unknown config key {full_key!r}: {parent} is a value, not a section")
    coerced = _coerce(value, tp, full_key, from_text)
    _check_range(coerced, f.metadata, full_key)
    setattr(obj, name, coerced)
    if given is not None:
        given[full_key] = where


def _did_you_mean(name: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _check_command(command: str, mapping: dict, where: str) -> None:
    """A config written for another command (e.g. a train preset passed to sample) gets
    told so, rather than 'unknown key' for its first section."""
    mine = {f.name for f in dataclasses.fields(SCHEMAS[command])}
    foreign = [str(k) for k in mapping if str(k) not in mine]
    if not foreign:
        return
    for other, schema in SCHEMAS.items():
        theirs = {f.name for f in dataclasses.fields(schema)}
        if other != command and set(map(str, mapping)) <= theirs:
            raise BadInput(f"{where} is a config for `{other}`, not `{command}` (it sets {', '.join(foreign)})")


def load(command: str, config: str | None, overrides: list[str], complete: bool = True) -> Any:
    """Build the checked config for `command` from a preset/file and key=value overrides.
    complete=False (--print-config) leaves out the checks that need the required keys."""
    cfg = SCHEMAS[command]()
    given: dict[str, str] = {}  # every key set -> where (for keys the chosen model kind ignores)
    if config is not None:
        mapping, where = _read_config_source(config)
        _check_command(command, mapping, where)
        for key, value in mapping.items():
            _set(cfg, [str(key)], value, str(key), False, given, where)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"argument {item!r} is not key=value (example: train.steps=100)")
        _set(cfg, key.split("."), value, key, True, given, "the command line")
    if isinstance(cfg, TrainJob):
        cfg.check_used(given)
    if hasattr(cfg, "check") and (complete or not missing_required(command, cfg)):
        cfg.check()
    return cfg


# Keys a command cannot run without (alternatives joined by |); --print-config marks them.
REQUIRED = {"sample": ("generator", "out", "count|balance"), "evaluate": ("generator|samples",),
            "transform": ("inputs", "out")}


def missing_required(command: str, cfg: Any) -> list[str]:
    """The required keys `cfg` leaves unset."""
    return [keys for keys in REQUIRED.get(command, ()) if not any(getattr(cfg, k) for k in keys.split("|"))]


def key_docs(command: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, comment) of every key of `command`, in schema order: the
    comment is the one written above the field in this file."""
    out: list[tuple[str, str, str, str]] = []

    def walk(cls: type, instance: Any, prefix: str) -> None:
        comments: dict[str, str] = {}
        pending: list[str] = []
        for line in inspect.getsource(cls).splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("#").strip())
                continue
            m = re.match(r"(\w+)\s*:", stripped)
            if m and line.startswith("    ") and not line.startswith("     "):
                comments[m.group(1)] = " ".join(pending)
            pending = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], value, f"{prefix}{f.name}.")
            else:
                out.append((prefix + f.name, _type_name(hints[f.name]), repr(value) if value != "" else "''",
                            comments.get(f.name, "")))

    walk(SCHEMAS[command], SCHEMAS[command](), "")
    return out


def to_dict(cfg: Any) -> dict:
    """The config as plain data. A training config holds only the keys its model kind reads,
    so a run's config.yaml (or --print-config) can be passed back as --config."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, TrainJob):
        kind = KINDS[cfg.model.kind]
        for section in ("model", "train"):
            out[section] = {k: v for k, v in out[section].items() if kind.uses(f"{section}.{k}")}
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

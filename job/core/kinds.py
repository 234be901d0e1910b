"""The model kinds `job train` can train: one registration per kind.

A registration says everything the rest of the job needs to know about a kind:
- the config keys it reads (`model.*` and `train.*`; `data.*`, `run.*`, `seed` and
  `resume` are every kind's). Any other `model.`/`train.` key set in a preset, a file or
  on the command line is refused naming the kind, instead of being silently unused;
- its Trainer (`job/training/<kind>.py`) and the network class of each architecture
  (`job/models/<kind>.py`), named as "module:attribute" and imported only when used, so
  reading a config never imports torch;
- the file a run exports (generator.safetensors, ...), whether `sample`/`evaluate` can draw
  digits from it, and the model files shipped in job/weights for `builtin:<name>`;
- one line of `python -m job train --help`.

Adding a kind: its network in job/models/, its Trainer in job/training/<kind>.py, one entry in
KINDS below, and new `model.`/`train.` fields (if any) in config.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

GENERATOR_FILE = "generator.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"

# What every kind trained in steps reads (the Trainer loop's own keys).
LOOP_KEYS = ("train.steps", "train.batch_size", "train.precision", "train.channels_last", "train.log_every",
             "train.checkpoint_every", "train.keep_checkpoints", "train.progress")
ADAMW_KEYS = ("train.lr", "train.weight_decay", "train.augment")


@dataclass(frozen=True)
class Kind:
    name: str
    help: str
    keys: tuple[str, ...]  # the model.* and train.* keys it reads, besides model.kind
    trainer: str  # "module:Class" of its Trainer
    archs: dict[str, str]  # architecture name -> "module:Class" of the network in its model file
    model_file: str  # what a run of this kind exports into run.dir
    draws_digits: bool = False  # forward(z, labels) -> images: `sample` and `evaluate` take it
    builtins: dict[str, str] = field(default_factory=dict)  # builtin:<name> -> file in job/weights
    size_multiple: int = 1  # data.image_size must be a multiple of this
    fixed_sizes: dict[str, int] = field(default_factory=dict)  # arch -> the only image size it takes

    def uses(self, key: str) -> bool:
        """Whether a dotted config key matters to this kind (keys outside model./train. always do)."""
        if not key.startswith(("model.", "train.")) or key == "model.kind":
            return True
        return key in self.keys

    def trainer_class(self) -> type:
        return attribute(self.trainer)

    def network_class(self, arch: str) -> type:
        return attribute(self.archs[arch])


def attribute(spec: str) -> Any:
    """The object a "module:attribute" spec names, its module imported now (kinds and layouts)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="dcgan",
            help="a DCGAN generator, class-conditional or not (model.arch dcgan28 or dcgan64)",
            keys=("model.arch", "model.conditional", "model.latent_dim", "model.g_width", "model.d_width",
                  "model.minibatch_std", *LOOP_KEYS, "train.sample_every", "train.lr_g", "train.lr_d", "train.beta1",
                  "train.beta2", "train.ema_decay"),
            trainer="job.training.dcgan:GanTrainer",
            archs={"dcgan28": "job.models.dcgan:Generator28", "dcgan64": "job.models.dcgan:Generator64"},
            model_file=GENERATOR_FILE,
            draws_digits=True,
            size_multiple=4,
            fixed_sizes={"dcgan64": 64},
        ),
        Kind(
            name="autoencoder",
            help="handwritten digit -> the same digit in a printed font, for `job transform`",
            keys=("model.width", "model.latent_dim", "model.font", *LOOP_KEYS, "train.sample_every", *ADAMW_KEYS),
            trainer="job.training.autoencoder:AutoencoderTrainer",
            archs={"conv": "job.models.autoencoder:PrintedDigitAutoencoder"},
            model_file=AUTOENCODER_FILE,
            builtins={"mnist": "autoencoder-mnist.safetensors"},
            size_multiple=4,
        ),
        Kind(
            name="mean",
            help="the per-class mean image (the baseline), computed in one pass and sampled like a generator",
            keys=("model.conditional", "model.pixel_noise"),
            trainer="job.training.mean:MeanTrainer",
            archs={"mean": "job.models.mean:MeanImages"},
            model_file=GENERATOR_FILE,
            draws_digits=True,
        ),
        Kind(
            name="classifier",
            help="the digit classifier that scores samples (CAS, FID features, min_confidence)",
            keys=("model.width", "model.feature_dim", *LOOP_KEYS, *ADAMW_KEYS),
            trainer="job.training.classifier:ClassifierTrainer",
            archs={"cnn": "job.models.classifier:DigitClassifier"},
            model_file=CLASSIFIER_FILE,
            builtins={"mnist": "classifier-mnist.safetensors"},
        ),
    )
}
# Kinds that `sample` and `evaluate` draw digits from.
GENERATOR_KINDS = tuple(name for name, kind in KINDS.items() if kind.draws_digits)


def help_text() -> str:
    """The kinds, one line each, for `python -m job train --help`."""
    lines = ["model kinds (model.kind=...):"]
    lines += [f"  {k.name:<12} {k.help}; writes {k.model_file}" for k in KINDS.values()]
    return "\n".join(lines)

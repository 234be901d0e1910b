"""Classifier training: the evaluation network of `job evaluate` and `sample min_confidence=`.

    accelerate launch -m job train --config classifier-mnist run.dir=runs/classifier

Cross-entropy with small random affine jitter, Adam with warm-up and cosine decay (a pure
function of the step, so resume needs no scheduler state). Test-set accuracy is logged at
every checkpoint and stored in classifier.safetensors' metadata.

`fit()` trains the same network with the same recipe in-process, without checkpoints: TSTR
(train on synthetic, test on real) in `job evaluate` uses it.
"""

from __future__ import annotations

import torch

from job import storage
from job.core import config, seeds
from job.core.precision import Precision
from job.data import loading
from job.data.augment import random_affine
from job.models import build_model, scoring
from job.models.files import export_model
from job.training.steps import adam, classifier_step, warmup_cosine_lr
from job.training.trainer import Trainer

ARCH = "cnn"


def classifier_kwargs(channels: int, num_classes: int, width: int, feature_dim: int, image_size: int) -> dict:
    return {"channels": channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim,
            "image_size": image_size}


class ClassifierTrainer(Trainer):

    def build(self) -> None:
        m = self.cfg.model
        self.kwargs = classifier_kwargs(self.channels, self.dataset_classes, m.width, m.feature_dim,
                                        self.cfg.data.image_size)
        self.modules = {"classifier": build_model("classifier", ARCH, self.kwargs)}
        self.trained = ["classifier"]
        self._test = None
        self.test_accuracy: float | None = None

    def prepare(self) -> None:
        self.net = self.prepare_adamw("classifier")

    def precision_probe(self):
        return self.adamw_probe("classifier", classifier_step)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        images, labels = self.batch(step)
        images = self.jittered(images, step)
        self.net.train()
        lr = warmup_cosine_lr(step, t.steps, t.lr)
        out = classifier_step(self.net, self.optimizers["classifier"], self.scalers["classifier"], self.precision,
                              images, labels, lr)
        out["lr"] = torch.tensor(lr)
        return out

    def evaluate(self, done: int) -> dict[str, float]:
        if self._test is None:
            split = loading.load_split(self.cfg.data, train=False)
            self._test = (split.images, split.labels)
        net = self.modules["classifier"].eval()
        try:
            self.test_accuracy = scoring.accuracy(net, *self._test)
        finally:
            net.train()
        return {"test_accuracy": round(self.test_accuracy, 6)}

    def export(self, step: int) -> None:
        if self.test_accuracy is None:
            self.evaluate(step)
        net = self.modules["classifier"]
        extra = {"dataset": self.cfg.data.name, "test_accuracy": self.test_accuracy, "seed": self.cfg.seed,
                 "steps": step}
        export_model(storage.join(self.cfg.run.dir, self.model_file), net.state_dict(),
                                kind="classifier", arch=ARCH, kwargs=self.kwargs, step=step, extra=extra)


def fit(
    images: torch.Tensor,
    labels: torch.Tensor,
    kwargs: dict,
    steps: int,
    batch_size: int = 128,
    lr: float = config.TrainConfig.lr,  # the classifier-mnist recipe's defaults
    weight_decay: float = config.TrainConfig.weight_decay,
    augment: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    balanced_batches: bool = False,
    class_weights: torch.Tensor | None = None,
):
    """Train a fresh classifier on uint8 `images` [N, C, H, W] and `labels` with the
    project's recipe, in this process. Returns the model in eval mode. For a long tail:
    balanced_batches draws every batch class-balanced (oversampling, with replacement; the
    recipe's jitter makes the repeats differ), class_weights weighs the loss per class."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model("classifier", ARCH, kwargs).to(device=device, memory_format=torch.channels_last)
    opt = adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    precision = Precision("no", device.type)
    scaler = precision.scaler()
    batch = min(batch_size, len(images))
    batches = loading.EpochBatches(len(images), batch, 0, 1, seed, "cpu")
    per_item = None
    if balanced_batches:  # every class equally likely, each digit equally likely within its class
        counts = torch.bincount(labels.cpu())
        per_item = (1.0 / counts.clamp(min=1).double())[labels.cpu()]
    weights = class_weights.to(device) if class_weights is not None else None
    noise = torch.Generator(device=device)
    model.train()
    for step in range(steps):
        if per_item is None:
            idx = batches.indices(step)
        else:
            draw = torch.Generator().manual_seed(seeds.stream_seed(seed, step, 0xBA1))
            idx = torch.multinomial(per_item, batch, replacement=True, generator=draw)
        x = loading.to_model_input(images[idx].to(device), kwargs["image_size"], channels_last=False)
        if augment:
            x = random_affine(x, noise.manual_seed(seeds.stream_seed(seed, step)))
        x = x.contiguous(memory_format=torch.channels_last)
        classifier_step(model, opt, scaler, precision, x, labels[idx].to(device),
                        warmup_cosine_lr(step, steps, lr), weights)
    return model.eval()

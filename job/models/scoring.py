"""Run the evaluation classifier over uint8 digits: features, logits, predictions.

Used by evaluate (every metric), sample (the min_confidence filter) and classifier
training (test accuracy). Images are uint8 [N, C, H, W] as stored in datasets and shards;
they are resized to the classifier's size when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from job.core.errors import BadInput
from job.data import loading


def resolve_classifier(spec: str) -> str:
    """A `classifier=` value -> a path or URI. `builtin:mnist` is the shipped file."""
    from job.models import resolve_builtin

    return resolve_builtin(spec, "classifier")


def load_classifier(spec: str, device: torch.device | str = "cpu"):
    """(model in eval mode, info, file bytes) of a `classifier=` value."""
    from job.models import load_model

    return load_model(resolve_classifier(spec), "classifier", device)


@dataclass
class Scores:
    features: torch.Tensor  # float32 [N, F] on the CPU
    logits: torch.Tensor  # float32 [N, K] on the CPU

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


def fits(model, images: torch.Tensor, where: str) -> None:
    """Refuse images whose channel count the classifier was not trained on."""
    if images.shape[1] != model.channels:
        raise BadInput(f"{where} has {images.shape[1]} channel(s) but the classifier expects {model.channels}")


@torch.inference_mode()
def score(model, images: torch.Tensor, batch_size: int = 1000, device: torch.device | str | None = None) -> Scores:
    """Features and logits of uint8 images [N, C, H, W], computed in batches on `device`."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    features, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        x = loading.to_model_input(images[start : start + batch_size].to(device), model.image_size, channels_last=False)
        f, y = model.features_and_logits(x)
        features.append(f.float().cpu())
        logits.append(y.float().cpu())
    if not features:
        return Scores(torch.empty(0, model.num_features), torch.empty(0, model.num_classes))
    return Scores(torch.cat(features), torch.cat(logits))


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of `images` the model classifies as `labels`."""
    predictions = score(model, images, batch_size).predictions
    return (predictions == labels.cpu()).sum().item() / max(1, len(labels))  # exact, not float32

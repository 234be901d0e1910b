"""The evaluation classifier: a small CNN that scores generated digits.

It is the feature extractor and the judge of every quality metric (FID in its feature
space, Inception Score, CAS, TSTR, class balance, precision/recall, the `min_confidence`
filter of `sample`). Inception-v3 is the usual choice for natural images, but its weights
cannot be fetched offline and it sees 28x28 grey digits through a 299x299 RGB resize;
a network trained on the digits themselves measures what matters for them.

Input: images in [-1, 1] (what generators emit and `data.to_model_input` makes), any
channel count, `image_size` x `image_size`. `features()` is the penultimate layer.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitClassifier(nn.Module):
    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 image_size: int = 28, dropout: float = 0.3):
        super().__init__()
        self.channels, self.num_classes, self.image_size = channels, num_classes, image_size
        self.num_features = feature_dim  # read by torchmetrics, and by the metric code
        w = width
        self.body = nn.Sequential(
            *_conv_block(channels, w),  # [B, w, S, S]
            nn.MaxPool2d(2),  # [B, w, S/2, S/2]
            *_conv_block(w, 2 * w),
            *_conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),  # [B, 2w, S/4, S/4]
            *_conv_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2),  # [B, 4w, 2, 2]: any input size ends here
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(16 * w, feature_dim, bias=False), nn.BatchNorm1d(feature_dim),
                                   nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] in [-1, 1] -> [B, feature_dim] (non-negative: after a ReLU)."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)

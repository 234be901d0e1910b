"""Long-tailed training splits cut from a balanced one (`data.profile=`), so that the
rebalancing experiment is one command: train a generator on a long tail, sample the missing
digits, evaluate the lift.

    data.profile=exp100              # exponential: class c keeps base x 100^(-c/(C-1)) digits
    data.profile=step:2,5,8@0.01     # step: classes 2, 5 and 8 keep 1% of base, the others base

`base` is the smallest class's count in the full split, so the profile is exactly what it
says (the largest class holds `ratio` times the smallest, whatever the dataset's own
imbalance). Which digits a class keeps is drawn with `data.profile_seed`: the same seed, the
same digits. The profiles follow the long-tail literature (Cui et al. 2019, exponential with
imbalance ratio 100; Buda et al. 2018, step). Only the training split is cut; test splits
stay whole, so accuracy is measured on every class alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from job.core import seeds
from job.core.errors import BadInput

PROFILE_STREAM = 0x50524F46  # "PROF": the selection's own random stream, apart from every other


@dataclass(frozen=True)
class Profile:
    """A parsed data.profile: exponential with `ratio`, or a step cutting `classes` to `fraction`."""

    text: str
    kind: str  # "exp" | "step"
    key: str = "data.profile"  # the key it was given as, named in errors
    ratio: float = 1.0
    classes: tuple[int, ...] = ()
    fraction: float = 1.0

    def counts(self, available: list[int]) -> list[int]:
        """Digits each class keeps, given how many each has. A class it needs that the split
        lacks is BadInput."""
        missing = [c for c, n in enumerate(available) if n == 0]
        wanted = set(range(len(available))) if self.kind == "exp" else set(self.classes)
        outside = sorted(c for c in self.classes if c >= len(available))
        if outside:
            raise BadInput(f"{self.key}={self.text} names class {outside[0]}, but this dataset has classes "
                           f"0-{len(available) - 1}")
        if missing and (wanted & set(missing) or len(missing) == len(available)):
            raise BadInput(f"{self.key}={self.text}: class {missing[0]} has no digits in this split, so the "
                           "profile cannot be cut from it")
        base = min(n for n in available if n > 0)
        last = max(len(available) - 1, 1)
        if self.kind == "exp":
            return [max(1, round(base * self.ratio ** (-c / last))) for c in range(len(available))]
        return [max(1, round(base * self.fraction)) if c in wanted else base for c in range(len(available))]

    def select(self, labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
        """Indices (sorted) of the digits the profile keeps from a split with these labels."""
        available = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
        kept = []
        for c, n in enumerate(self.counts(available)):
            members = torch.nonzero(labels.cpu() == c).flatten()
            g = torch.Generator().manual_seed(seeds.stream_seed(seed, PROFILE_STREAM, c))
            kept.append(members[torch.randperm(len(members), generator=g)[:n]])
        return torch.sort(torch.cat(kept)).values


def parse(text: str, key: str = "data.profile") -> Profile | None:
    """The Profile named by `key` ('' or 'none': None). Anything else is BadInput."""
    text = text.strip()
    if text in ("", "none"):
        return None
    exp = re.fullmatch(r"exp(\d+(?:\.\d+)?)", text)
    if exp:
        ratio = float(exp.group(1))
        if ratio < 1:
            raise BadInput(f"{key}={text}: the imbalance ratio must be at least 1 (exp100: 100 to 1)")
        return Profile(text, "exp", key=key, ratio=ratio)
    step = re.fullmatch(r"step:(\d+(?:,\d+)*)@(\d*\.?\d+)", text)
    if step:
        classes = tuple(sorted({int(c) for c in step.group(1).split(",")}))
        fraction = float(step.group(2))
        if not 0 < fraction <= 1:
            raise BadInput(f"{key}={text}: the fraction after @ must be in (0, 1] (0.01: 1% of the digits)")
        return Profile(text, "step", key=key, classes=classes, fraction=fraction)
    raise BadInput(f"{key}={text!r} is not a profile: use exp<ratio> (exp100) or step:<classes>@<fraction> "
                   "(step:2,5,8@0.01), or none")

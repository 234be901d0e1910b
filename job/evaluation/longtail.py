"""The long-tail question: "some of my classes are rare; do a generator's digits of those
classes help my classifier more than what I would try first?"

The real set is the training split cut to `longtail.profile` (job/data/profiles.py). A fresh
classifier (the classifier-mnist recipe, jitter included) is trained for the same number of
steps five ways, each tested on the whole real test split:

- real: the long-tailed set alone;
- oversampled: class-balanced batches drawn from it (with replacement; the jitter makes the
  repeats differ);
- reweighted: the loss of each class weighed by 1 / its count (mean weight 1);
- synthetic: the set topped up to balance with the generator's digits (sample balance='s
  counts: every class brought to the largest class's count);
- synthetic_filtered: the same, keeping only digits that the `real` arm's own classifier
  recognizes as their class with at least longtail.min_confidence (redrawn up to 20 rounds;
  the judge knows only the long-tailed set, so no outside data enters).

Reported per arm: accuracy, balanced accuracy (the mean of per-class accuracies) and the
rare classes' mean accuracy (rare: fewer than a tenth of the largest class's digits), mean
and spread over seeds; and `rare_lift`: the synthetic arms' rare mean minus the best
baseline's (real, oversampled, reweighted), per seed.
"""

from __future__ import annotations

import torch

from job.core import seeds
from job.data import loading, profiles
from job.evaluation.lift import spread
from job.models import scoring
from job.sampling import balance
from job.sampling.generation import ConfidenceFilter, draw_filtered
from job.training.classifier import fit

ARMS = ("real", "oversampled", "reweighted", "synthetic", "synthetic_filtered")
BASELINES = ("real", "oversampled", "reweighted")
RARE_SHARE = 0.1  # a class with fewer than this share of the largest class's digits is rare
FILTER_ROUNDS = 20


def rare_classes(counts: list[int]) -> list[int]:
    return [c for c, n in enumerate(counts) if n < RARE_SHARE * max(counts)]


def per_class_accuracy(model, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    predicted = scoring.score(model, images).predictions
    labels = labels.cpu()
    return [((predicted == c) & (labels == c)).sum().item() / max(1, (labels == c).sum().item())
            for c in range(num_classes)]


def top_up_digits(G, need: list[int], seed: int, batch: int, device, precision_mode: str, judge=None,
                  min_confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images, labels, acceptance) of what each class lacks, from the generator; with a
    judge, digits it does not recognize are redrawn, and those still refused dropped."""
    labels = balance.shard_labels(need, seed, 0, sum(need))
    gen = torch.Generator().manual_seed(seeds.stream_seed(seed, 0x1A11))
    keep = ConfidenceFilter(judge, min_confidence, batch, device) if judge is not None else None
    images, pending, drawn = draw_filtered(G, labels, gen, batch, device, precision_mode, keep, FILTER_ROUNDS)
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[pending] = False
    return images[kept].clone(), labels[kept], int(kept.sum()) / drawn


def one_seed(G, real: loading.Split, counts: list[int], need: list[int], test: loading.Split, kwargs: dict,
             steps: int, batch_size: int, seed: int, device, precision_mode: str, min_confidence: float) -> dict:
    """Every arm's per-class test accuracy for one seed (its initialisation, batch order and
    synthetic digits); `counts` are the real set's digits per class, `need` what tops it up."""
    common = {"steps": steps, "batch_size": batch_size, "seed": seed, "device": device}
    models = {"real": fit(real.images, real.labels, kwargs, **common),
              "oversampled": fit(real.images, real.labels, kwargs, balanced_batches=True, **common)}
    weights = 1.0 / torch.tensor(counts, dtype=torch.float32)
    models["reweighted"] = fit(real.images, real.labels, kwargs, class_weights=weights * len(counts) / weights.sum(),
                               **common)
    acceptance = {}
    for arm, judge in (("synthetic", None), ("synthetic_filtered", models["real"])):
        images, labels, acceptance[arm] = top_up_digits(G, need, seed, 1000, device, precision_mode, judge,
                                                        min_confidence)
        models[arm] = fit(torch.cat([real.images, images]), torch.cat([real.labels, labels]), kwargs, **common)
    per_class = {arm: per_class_accuracy(models[arm], test.images, test.labels, real.num_classes) for arm in ARMS}
    return {"per_class": per_class, "acceptance": acceptance}


def summarize(per_seed: list[dict], counts: list[int], test_labels: torch.Tensor) -> dict:
    """Mean and spread over seeds of each arm's accuracy, balanced accuracy and rare mean,
    and the synthetic arms' lift on the rare classes over the best baseline."""
    rare = rare_classes(counts)
    share = torch.bincount(test_labels.cpu(), minlength=len(counts)).double() / len(test_labels)
    arms = {}
    for arm in ARMS:
        rows = [seed["per_class"][arm] for seed in per_seed]
        arms[arm] = {
            "accuracy": spread([sum(a * s for a, s in zip(row, share.tolist())) for row in rows]),
            "balanced_accuracy": spread([sum(row) / len(row) for row in rows]),
            "rare_accuracy": spread([sum(row[c] for c in rare) / len(rare) for row in rows]),
            "per_class": [round(sum(row[c] for row in rows) / len(rows), 6) for c in range(len(counts))],
        }
    best = max(BASELINES, key=lambda arm: arms[arm]["rare_accuracy"]["mean"])
    lift = {}
    for arm in ("synthetic", "synthetic_filtered"):
        points = [100 * (seed_a - seed_b) for seed_a, seed_b in zip(arms[arm]["rare_accuracy"]["values"],
                                                                    arms[best]["rare_accuracy"]["values"])]
        lift[arm] = {"over": best, **spread(points)}
    return {"rare_classes": rare, "arms": arms, "rare_lift": lift,
            "acceptance": {arm: spread([seed["acceptance"][arm] for seed in per_seed])
                           for arm in ("synthetic", "synthetic_filtered")}}


def ask(G, train: loading.Split, test: loading.Split, profile_text: str, profile_seed: int, kwargs: dict,
        steps: int, batch_size: int, first_seed: int, seeds_: int, device, precision_mode: str,
        min_confidence: float, say) -> dict:
    """The long-tail question over `seeds_` seeds; `train` is the whole training split."""
    profile = profiles.parse(profile_text, "longtail.profile")
    kept = profile.select(train.labels, train.num_classes, profile_seed)
    real = loading.Split(train.images[kept], train.labels[kept], train.num_classes)
    counts = torch.bincount(real.labels.cpu(), minlength=real.num_classes).tolist()
    say(f"long tail {profile_text}: {', '.join(map(str, counts))} real digits per class; 5 arms x {seeds_} seeds, "
        f"{steps} steps each")
    need = balance.top_up(counts, 0, real.num_classes, "the long-tailed set")
    per_seed = [one_seed(G, real, counts, need, test, kwargs, steps, batch_size, seed, device, precision_mode,
                         min_confidence) for seed in range(first_seed, first_seed + seeds_)]
    return {"profile": profile_text, "profile_seed": profile_seed, "counts": counts, "steps": steps,
            "seeds": seeds_, "min_confidence": min_confidence, **summarize(per_seed, counts, test.labels)}

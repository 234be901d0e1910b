"""Drawing digits from a generator: the inputs of each shard (labels, then noise, from a
stream seeded by (seed, shard)), the forward pass in the one autocast policy of
job/core/precision.py, the min_confidence filter and labels=classifier quotas, and a
shard's content for each layout (job/shardsets/layouts.py names `shard_digits` and
`shard_strings`). Shared by `job sample` and `job evaluate`; the bytes of a shard depend
only on its plan, never on timing, batch size or the number of workers.
"""

from __future__ import annotations

import math

import torch

from job.core import config, runtime, seeds
from job.core.errors import BadInput
from job.core.precision import Precision
from job.core.precision import choose as precision_choice
from job.data import loading, strings
from job.models import scoring
from job.sampling import balance
from job.shardsets import formats
from job.shardsets.records import Plan


def shard_stream(plan: Plan, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seeds.stream_seed(plan.seed, index))


def draw_labels(n: int, num_classes: int, labels: str, gen: torch.Generator) -> torch.Tensor:
    """n labels by the `labels=` rule (NO_LABEL when num_classes is 0), drawn from `gen`."""
    if not num_classes:
        return torch.full((n,), formats.NO_LABEL, dtype=torch.int64)
    classes = torch.tensor(config.label_choices(labels) or range(num_classes), dtype=torch.int64)
    if labels == "uniform":
        return classes[torch.randint(0, len(classes), (n,), generator=gen)]
    # balanced over all classes or over the listed ones: equal counts (+-1), shuffled
    return classes.repeat(math.ceil(n / len(classes)))[:n][torch.randperm(n, generator=gen)]


def draw_inputs(n: int, latent_dim: int, num_classes: int, labels: str, gen: torch.Generator):
    """(z [n, latent_dim], labels [n]): the labels first, then the noise, both from `gen`."""
    y = draw_labels(n, num_classes, labels, gen)
    return torch.randn(n, latent_dim, generator=gen), y


@torch.inference_mode()
def generate(G, z: torch.Tensor, labels: torch.Tensor, batch: int, device: torch.device,
             precision: str) -> torch.Tensor:
    """uint8 [n, C, H, W] on the CPU (pinned on CUDA), generated in chunks of `batch`."""
    pin = device.type == "cuda"
    out = torch.empty((z.shape[0], *G.output_shape), dtype=torch.uint8, pin_memory=pin)
    for start in range(0, z.shape[0], batch):
        zc = z[start : start + batch].to(device, non_blocking=True)
        yc = labels[start : start + batch].to(device, non_blocking=True) if G.num_classes else None
        with Precision(precision, device.type).autocast():  # the one autocast policy (job.precision)
            x = G(zc, yc)
        pixels = loading.to_pixels(x)
        out[start : start + batch].copy_(pixels, non_blocking=True)
    if pin:
        torch.cuda.current_stream(device).synchronize()
    return out


class ConfidenceFilter:
    """Accepts digits the classifier recognizes as their requested class with probability
    >= min_confidence. Rejected digits are redrawn (see shard_digits)."""

    MAX_ROUNDS = 200  # enough for a 5% acceptance rate on a 10,000-digit shard
    PREFLIGHT_PER_CLASS = 100
    MIN_ACCEPTANCE = 0.05

    def __init__(self, classifier, min_confidence: float, batch: int, device: torch.device):
        self.classifier, self.min_confidence, self.batch, self.device = classifier, min_confidence, batch, device

    def accepts(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = scoring.score(self.classifier, images, self.batch, self.device).probs
        return probs[torch.arange(len(labels)), labels] >= self.min_confidence

    def preflight(self, G, plan: Plan) -> list[float]:
        """Acceptance rate of each class on a few digits from a separate stream; refuses
        (before anything is written) a setting that would take too many redraws."""
        classes = plan.choices() or list(range(plan.num_classes))
        gen = torch.Generator().manual_seed(seeds.stream_seed(plan.seed, -1))
        labels = torch.tensor(classes).repeat_interleave(self.PREFLIGHT_PER_CLASS)
        z = torch.randn(len(labels), G.latent_dim, generator=gen)
        ok = self.accepts(generate(G, z, labels, self.batch, self.device, plan.precision), labels)
        rates = [ok[labels == c].float().mean().item() for c in classes]
        worst = min(range(len(classes)), key=lambda i: rates[i])
        if rates[worst] < self.MIN_ACCEPTANCE:
            raise BadInput(
                f"min_confidence={self.min_confidence} accepts only {100 * rates[worst]:.1f}% of this generator's "
                f"class {classes[worst]} digits (at least {100 * self.MIN_ACCEPTANCE:.0f}% needed): lower it or "
                "train the generator longer"
            )
        return rates


class ClassifierLabels:
    """labels=classifier: an unconditional generator's digits take the classifier's most likely
    class (when its probability is at least min_confidence). Each shard draws its quota first
    (every class equally, as labels=balanced, shuffled), then fills it round by round from
    the shard's own stream: a digit of a class whose quota is full is dropped. So a shard's
    bytes depend only on the plan, and the set is exactly as balanced as a conditional one."""

    MAX_ROUNDS = 200
    PREFLIGHT = 2000
    ROUND_BUDGET = 100  # expected rounds to fill the rarest class's quota of one shard, at most
    MIN_ROUND = 256

    def __init__(self, classifier, min_confidence: float, batch: int, device: torch.device):
        self.classifier, self.min_confidence, self.batch, self.device = classifier, min_confidence, batch, device

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class of each image, or NO_LABEL below min_confidence."""
        confidence, predicted = scoring.score(self.classifier, images, self.batch, self.device).probs.max(dim=1)
        return torch.where(confidence >= self.min_confidence, predicted, formats.NO_LABEL)

    def expected_rounds(self, share: float, shard: int, num_classes: int) -> float:
        """Rounds `fill` takes on average to find a class's quota in a shard of `shard` digits
        when `share` of the generator's digits are of that class (infinite when none are)."""
        quota, round_size = -(-shard // num_classes), max(-(-shard // 4), self.MIN_ROUND)
        return quota / (share * round_size) if share > 0 else math.inf

    def preflight(self, G, plan: Plan) -> list[float]:
        """Each class's share of a few digits from a separate stream; refuses (before anything
        is written) a generator whose rarest class would take more than ROUND_BUDGET rounds
        per shard to fill its quota (the cost grows with the shard size: 0.4% at 10,000 a shard)."""
        gen = torch.Generator().manual_seed(seeds.stream_seed(plan.seed, -1))
        z = torch.randn(self.PREFLIGHT, G.latent_dim, generator=gen)
        judged = self.labels(generate(G, z, torch.zeros(len(z), dtype=torch.int64), self.batch, self.device,
                                      plan.precision))
        shares = (torch.bincount(judged[judged >= 0], minlength=plan.num_classes).float() / len(judged)).tolist()
        rarest = min(range(plan.num_classes), key=lambda c: shares[c])
        shard = plan.shard_count(0)
        rounds = self.expected_rounds(shares[rarest], shard, plan.num_classes)
        if rounds > self.ROUND_BUDGET:
            cost = f"about {rounds:.0f} rounds" if math.isfinite(rounds) else "rounds without end"
            raise BadInput(
                f"labels=classifier: only {100 * shares[rarest]:.2f}% of this generator's digits are class {rarest}"
                + (f" with confidence >= {self.min_confidence}" if self.min_confidence else "")
                + f": filling its quota in a shard of {shard} would take {cost} (at most {self.ROUND_BUDGET}): "
                "train the generator longer, use a smaller shard_size"
                + (" or lower min_confidence" if self.min_confidence else "")
            )
        return shares

    @torch.inference_mode()
    def fill(self, G, plan: Plan, quota: torch.Tensor, gen: torch.Generator, index: int) -> tuple[torch.Tensor, int]:
        """(images matching `quota`'s labels, digits drawn), rounds of noise from `gen`."""
        n = len(quota)
        images = torch.empty((n, *G.output_shape), dtype=torch.uint8)
        slots = [torch.nonzero(quota == c).flatten() for c in range(plan.num_classes)]
        filled = [0] * plan.num_classes
        round_size, drawn = max(-(-n // 4), self.MIN_ROUND), 0
        no_labels = torch.zeros(round_size, dtype=torch.int64)  # an unconditional G ignores them
        for _ in range(self.MAX_ROUNDS):
            if all(filled[c] == len(slots[c]) for c in range(plan.num_classes)):
                return images, drawn
            z = torch.randn(round_size, G.latent_dim, generator=gen)
            candidates = generate(G, z, no_labels, self.batch, self.device, plan.precision)
            drawn += round_size
            judged = self.labels(candidates)
            for c in range(plan.num_classes):
                take = torch.nonzero(judged == c).flatten()[: len(slots[c]) - filled[c]]
                images[slots[c][filled[c] : filled[c] + len(take)]] = candidates[take]
                filled[c] += len(take)
        if any(filled[c] < len(slots[c]) for c in range(plan.num_classes)):
            short = {c: len(slots[c]) - filled[c] for c in range(plan.num_classes) if filled[c] < len(slots[c])}
            raise BadInput(f"shard {index}: labels=classifier still lacks {short} (class: digits) after "
                           f"{self.MAX_ROUNDS} rounds: train the generator longer or lower min_confidence "
                           "(finished shards are kept)")
        return images, drawn


@torch.inference_mode()  # generate() returns inference tensors; redraws write into them
def draw_filtered(G, labels: torch.Tensor, gen: torch.Generator, batch: int, device: torch.device, precision: str,
                  keep: ConfidenceFilter | None, rounds: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, indices the filter still rejects, digits drawn) for `labels`, noise from `gen`.
    With a filter, the digits it rejects are redrawn round by round from the same stream (same
    labels, new noise), at most `rounds` times, so the result depends only on the stream."""
    z = torch.randn(len(labels), G.latent_dim, generator=gen)
    images = generate(G, z, labels, batch, device, precision)
    drawn = len(labels)
    if keep is None:
        return images, torch.zeros(0, dtype=torch.int64), drawn
    pending = torch.nonzero(~keep.accepts(images, labels)).flatten()
    for _ in range(rounds):
        if len(pending) == 0:
            break
        z = torch.randn(len(pending), G.latent_dim, generator=gen)
        candidates = generate(G, z, labels[pending], batch, device, precision)
        drawn += len(pending)
        ok = keep.accepts(candidates, labels[pending])
        images[pending[ok]] = candidates[ok]
        pending = pending[~ok]
    return images, pending, drawn


def digits_for(G, plan: Plan, labels: torch.Tensor, gen: torch.Generator, batch: int, device: torch.device,
               keep: ConfidenceFilter | None, index: int) -> tuple[torch.Tensor, int]:
    """(images, digits drawn) for `labels`, noise from `gen`, every digit passing the filter
    (draw_filtered), so the result depends only on the plan, never on timing or on the
    number of workers."""
    images, pending, drawn = draw_filtered(G, labels, gen, batch, device, plan.precision, keep,
                                           keep.MAX_ROUNDS if keep is not None else 0)
    if len(pending):
        raise BadInput(f"shard {index}: {len(pending)} digits still below min_confidence={keep.min_confidence} "
                       f"after {keep.MAX_ROUNDS} redraws: lower it (finished shards are kept)")
    return images, drawn


def shard_digits(G, plan: Plan, index: int, batch: int, device: torch.device,
                 keep: ConfidenceFilter | ClassifierLabels | None = None, texts: list[str] | None = None):
    """((images, labels), digits drawn) of shard `index`: labels first, then the noise.
    labels=classifier: the labels are the quota `keep` (a ClassifierLabels) fills."""
    gen = shard_stream(plan, index)
    if plan.balance:  # the plan fixes every label of a balancing set
        labels = balance.shard_labels(plan.balance["per_class"], plan.seed, index * plan.shard_size,
                                      plan.shard_count(index))
    else:
        labels = draw_labels(plan.shard_count(index), plan.num_classes, plan.labels, gen)
    if plan.labels == "classifier":
        images, drawn = keep.fill(G, plan, labels, gen, index)
    else:
        images, drawn = digits_for(G, plan, labels, gen, batch, device, keep, index)
    return (images, labels), drawn


def shard_strings(G, plan: Plan, index: int, batch: int, device: torch.device, keep: ConfidenceFilter | None = None,
                  texts: list[str] | None = None):
    """(StringBatch, digits drawn) of shard `index`: the texts (given, from the texts file,
    or drawn), then every digit's layout draws, then the digits, all from the shard's stream."""
    gen = shard_stream(plan, index)
    layout = strings.Layout.from_config(config.StringsConfig(**plan.strings))
    n = plan.shard_count(index)
    if plan.text is not None:
        chosen = [plan.text] * n
    elif texts:
        first = index * plan.shard_size
        chosen = [texts[(first + k) % len(texts)] for k in range(n)]
    else:
        chosen = strings.draw_texts(n, layout, gen)
    labels = torch.tensor([int(ch) for text in chosen for ch in text], dtype=torch.int64)
    draws = strings.GlyphDraws.draw(len(labels), layout, gen)
    digits, drawn = digits_for(G, plan, labels, gen, batch, device, keep, index)
    return strings.assemble(chosen, digits, draws, layout), drawn


def generation_precision(requested: str, G: torch.nn.Module, info: dict, batch: int, acc) -> Precision:
    """The precision to generate in: `requested`, where auto on a CPU is measured (G's forward
    at this batch size in fp32 and bf16, on the main process, shared with the others; cached
    per CPU, generator and batch size). Used by sample and evaluate."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, G.latent_dim, generator=g)
    y = torch.randint(0, max(G.num_classes, 1), (batch,), generator=g)

    def probe(p: Precision) -> None:
        generate(G, z, y, batch, acc.device, p.mode)

    key = {"command": "generate", "model": {k: info.get(k) for k in ("kind", "arch", "kwargs")}, "batch_size": batch}
    # Keyed by machine, not threads: a rerun with another number of processes on this machine
    # reads the same choice, so the set's bytes do not depend on how many processes ran.
    return precision_choice(requested, acc.device, probe, batch, key, measure_here=acc.is_main_process,
                            share=lambda result: runtime.from_main(acc, result), per_thread_count=False)

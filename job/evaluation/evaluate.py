"""`job evaluate`: score a generator or a shard set the way augmentation users care about.

    python -m job evaluate generator=runs/cdcgan/generator.safetensors [n=10000] [tstr.n=60000]
    python -m job evaluate samples=s3://bucket/synthetic/run1 out=s3://bucket/reports/run1
    python -m job evaluate generator=runs/cdcgan/generator.safetensors augment.k=100 [augment.ratio=1]

Data flow: config -> the classifier (shipped builtin:mnist or a file) -> real train and test
splits -> digits to score (generated with balanced labels from the generator's own seeded
stream, or read from the shard set and checked against its manifest) -> one classifier
pass per set -> metrics per row (quality.py) -> TSTR: a fresh classifier trained on each
row's digits, tested on the real test split -> report.json, report.md, grid.png in `out`.

augment.k=K adds the augmentation user's question (job/evaluation/lift.py): a classifier trained on K
real digits per class alone, and on those plus augment.ratio x K x classes of the subject's
digits, both tested on the real test split, over augment.seeds seeds: the report's
"augment" section holds both accuracies and the lift in points.

Rows: the subject (generator or samples); `real`, the floor (real test digits against real
train digits: the FID a perfect generator would get at this n; its TSTR is the same
classifier trained on real digits); and the reference row: `class-means`, the per-class
mean image baseline (the `mean` model of the real train split, sampled like a
generator), or `baseline=<generator file>` (a trained mean model, or another generator).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from job import storage
from job.core import config, console, runtime, seeds
from job.core.errors import BadInput
from job.data import loading
from job.data.digit_image import grid_png
from job.evaluation import lift, longtail, quality
from job.models import scoring
from job.sampling.generation import draw_inputs, generate, generation_precision
from job.shardsets import layouts
from job.shardsets.sets import read_manifest, shard_set_digits
from job.storage.reports import write_report
from job.training.classifier import fit

REPORT_FORMAT = "digit-job/evaluation"


# ----------------------------------------------------------------------------- digits to score


def generated_digits(G, n: int, seed: int, batch: int, device,
                     precision: str = "no") -> tuple[torch.Tensor, torch.Tensor]:
    """n digits from G with balanced labels (NO_LABEL when unconditional), seeded."""
    gen = torch.Generator().manual_seed(seeds.stream_seed(seed, 0xE7A1))
    z, labels = draw_inputs(n, G.latent_dim, G.num_classes, "balanced", gen)
    return generate(G, z, labels, batch, device, precision), labels


def class_means_model(train: loading.Split, image_size: int):
    """The mean-image baseline (models.mean, as `train model.kind=mean` makes it) of `train`."""
    from job.models.mean import MeanImages, class_sums, means_from_sums

    model = MeanImages(train.images.shape[1], image_size, train.num_classes)
    to_input = lambda x: loading.to_model_input(x, image_size, channels_last=False)  # noqa: E731
    model.means.copy_(means_from_sums(*class_sums(train.images, train.labels, train.num_classes, to_input)))
    return model.eval()


# ----------------------------------------------------------------------------- one row


class Scorer:
    """Everything a row is measured against: the classifier, the real reference features,
    the real test split, and the settings."""

    def __init__(self, cfg: config.EvaluateJob, classifier, classifier_kwargs: dict, train: loading.Split,
                 test: loading.Split, device):
        self.cfg, self.classifier, self.classifier_kwargs, self.device = cfg, classifier, classifier_kwargs, device
        self.train, self.test = train, test
        gen = torch.Generator().manual_seed(seeds.stream_seed(cfg.seed, 0x5EA1))
        reference_idx = torch.randperm(len(train.labels), generator=gen)[: cfg.n]
        self.reference = self.score(train.images[reference_idx], "the real train split")
        self.reference_manifold = quality.Manifold(self.reference.features, cfg.k)  # shared by every row

    def score(self, images: torch.Tensor, where: str) -> scoring.Scores:
        scoring.fits(self.classifier, images, where)
        return scoring.score(self.classifier, images, self.cfg.batch_size, self.device)

    def row(self, images: torch.Tensor, labels: torch.Tensor, tstr_images: torch.Tensor | None,
            tstr_labels: torch.Tensor | None, where: str) -> dict:
        cfg, k = self.cfg, self.train.num_classes
        started = time.perf_counter()
        scored = self.score(images, where)
        labeled = bool((labels >= 0).all())
        is_mean, is_std = quality.inception_score(scored.logits, seed=cfg.seed)
        precision, recall = quality.precision_recall(self.reference_manifold, scored.features)
        balance = quality.class_balance(scored.logits, k)
        row = {
            "n": int(len(labels)),
            "fid": quality.fid(self.reference.features, scored.features),
            "inception_score": is_mean,
            "inception_score_std": is_std,
            "cas": quality.class_accuracy(scored.logits, labels) if labeled else None,
            "precision": precision,
            "recall": recall,
            "class_share_min": min(balance),
            "class_share_max": max(balance),
            "class_balance": balance,
            "tstr": None,
            "tstr_n": 0,
        }
        if tstr_images is not None and cfg.tstr.n > 0 and bool((tstr_labels >= 0).all()):
            row["tstr"], row["tstr_n"] = self.tstr(tstr_images, tstr_labels), int(len(tstr_labels))
        row["wall_s"] = round(time.perf_counter() - started, 1)
        return row

    def tstr(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy on the real test split of a fresh classifier trained on `images`."""
        t = self.cfg.tstr
        steps = max(1, math.ceil(t.epochs * len(labels) / t.batch_size))
        model = fit(images, labels, self.classifier_kwargs, steps, batch_size=t.batch_size, seed=self.cfg.seed,
                    device=self.device)
        return scoring.accuracy(model, self.test.images, self.test.labels, self.cfg.batch_size)


# ----------------------------------------------------------------------------- report


def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


def report_markdown(report: dict) -> str:
    lines = [
        f"# Evaluation of {report['subject']['uri']}",
        "",
        f"{report['n']} digits per row, judged by {report['classifier']['uri']} "
        f"(test accuracy {_fmt(report['classifier'].get('test_accuracy'), 2, True)}); "
        f"TSTR: {report['tstr']['n']} training digits, {report['tstr']['epochs']} epochs, "
        "tested on the real test split.",
        "",
        "| row | FID | IS | CAS | TSTR | precision | recall | class share min / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["rows"].items():
        lines.append(
            f"| {name} | {_fmt(r['fid'])} | {_fmt(r['inception_score'])} | {_fmt(r['cas'], 2, True)} | "
            f"{_fmt(r['tstr'], 2, True)} | {_fmt(r['precision'], 3)} | {_fmt(r['recall'], 3)} | "
            f"{_fmt(r['class_share_min'], 1, True)} / {_fmt(r['class_share_max'], 1, True)} |"
        )
    if report.get("augment"):
        a = report["augment"]
        lines += [
            "",
            f"Augmentation: {a['real_digits']} real digits ({a['k']} per class) alone: test accuracy "
            f"{_fmt(a['real']['mean'], 2, True)} (± {_fmt(a['real']['std'], 2, True)}); plus "
            f"{a['synthetic_digits']} of these digits (ratio {a['ratio']:g}): "
            f"{_fmt(a['real_plus_synthetic']['mean'], 2, True)} (± {_fmt(a['real_plus_synthetic']['std'], 2, True)}); "
            f"lift {a['lift_points']['mean']:+.2f} points (± {a['lift_points']['std']:.2f}), {a['seeds']} seeds, "
            f"{a['steps']} classifier steps each.",
        ]
    if report.get("longtail"):
        lt = report["longtail"]
        lines += ["", f"Long tail {lt['profile']} ({', '.join(map(str, lt['counts']))} real digits per class; rare: "
                      f"classes {', '.join(map(str, lt['rare_classes']))}), {lt['seeds']} seeds, {lt['steps']} steps "
                      "per arm, on the real test split:", "",
                  "| arm | rare classes | balanced accuracy | accuracy |", "|---|---|---|---|"]
        for arm, r in lt["arms"].items():
            lines.append(" | ".join([f"| {arm}"] + [
                f"{_fmt(r[key]['mean'], 2, True)} (± {_fmt(r[key]['std'], 2, True)})"
                for key in ("rare_accuracy", "balanced_accuracy", "accuracy")]) + " |")
        for arm, lift_ in lt["rare_lift"].items():
            lines.append(f"\n{arm} on the rare classes: {lift_['mean']:+.2f} points (± {lift_['std']:.2f}) over "
                         f"the best baseline ({lift_['over']}).")
    lines += [
        "",
        "FID is measured in the classifier's feature space against real train digits: the `real` row "
        "(real test digits) is the floor at this n. IS is at most the number of classes. CAS: share of "
        "conditional samples classified as their requested label (for `real`: the classifier's accuracy). "
        "TSTR: a fresh classifier trained only on the row's digits, tested on real ones (for `real`: trained "
        "on real train digits). Precision: fidelity, recall: diversity (k-NN manifolds, k="
        f"{report['k']}).",
        "",
        f"Device: {report['device']}; wall time {report['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, columns: int = 10) -> bytes:
    """One row per class (the first `columns` digits of it) when labeled, else the first 100."""
    if bool((labels >= 0).all()):
        picks = [torch.nonzero(labels == c).flatten()[:columns] for c in range(num_classes)]
        images = images[torch.cat(picks)] if picks else images[:0]
    else:
        images = images[: columns * 10]
    return grid_png(loading.to_model_input(images, images.shape[-1], channels_last=False), nrow=columns)


def default_out(cfg: config.EvaluateJob) -> str:
    if cfg.out:
        return cfg.out
    if cfg.generator:
        folder = cfg.generator.rstrip("/").rsplit("/", 1)[0] if "/" in cfg.generator else "."
        return storage.join(folder, "eval")
    return storage.join(cfg.samples, "eval")


# ----------------------------------------------------------------------------- the job


@dataclass
class _Subject:
    """What is scored: a generator (digits drawn later, on the device) or a shard set's digits."""

    record: dict  # the report's "subject"
    generator: torch.nn.Module | None = None
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def _read_subject(cfg: config.EvaluateJob, classifier, manifest: dict | None, wanted: int) -> _Subject:
    """Phase 1a: the generator file or shard set to score, checked against the classifier."""
    if cfg.generator:
        from job.models import load_generator

        G, info, raw = load_generator(cfg.generator)
        if G.output_shape[0] != classifier.channels:
            raise BadInput(f"{cfg.generator} makes {G.output_shape[0]}-channel images but the classifier "
                           f"expects {classifier.channels}: pass a classifier= trained on this dataset")
        return _Subject({"uri": cfg.generator, "kind": "generator", "sha256": storage.sha256(raw), **info}, G)
    images, labels = shard_set_digits(cfg.samples, manifest, wanted)
    if len(labels) < cfg.n:
        raise BadInput(f"samples={cfg.samples} holds {len(labels)} digits, fewer than n={cfg.n}")
    scoring.fits(classifier, images, f"samples={cfg.samples}")
    record = {"uri": cfg.samples, "kind": "samples", "count": manifest.get("count"),
              "generator": manifest.get("generator")}
    return _Subject(record, images=images, labels=labels)


def synthetic_count(cfg: config.EvaluateJob, num_classes: int) -> int:
    """Synthetic digits the augment question adds to the real ones (0 when it is off)."""
    return round(cfg.augment.ratio * cfg.augment.k * num_classes) if cfg.augment.k else 0


def _check_augment(cfg: config.EvaluateJob, subject: _Subject, num_classes: int) -> None:
    """augment.k needs labeled digits, enough of them."""
    if not cfg.augment.k:
        return
    labeled = (subject.generator.num_classes > 0 if subject.generator is not None
               else bool((subject.labels >= 0).all()))
    if not labeled:
        raise BadInput(f"augment.k needs labeled digits: {subject.record['uri']} has none (sample an unconditional "
                       "generator with labels=classifier, or use a conditional one)")
    wanted = synthetic_count(cfg, num_classes)
    if subject.labels is not None and len(subject.labels) < wanted:
        raise BadInput(f"augment.ratio={cfg.augment.ratio:g} x augment.k={cfg.augment.k} x {num_classes} classes "
                       f"needs {wanted} digits but samples={cfg.samples} holds {len(subject.labels)}")


def _augment(cfg: config.EvaluateJob, scorer: Scorer, subject: _Subject, say) -> dict | None:
    """Phase 3b: real k per class alone vs plus the subject's digits, per seed (job/evaluation/lift.py)."""
    a = cfg.augment
    if not a.k:
        return None
    train, test = scorer.train, scorer.test
    wanted = synthetic_count(cfg, train.num_classes)
    synthetic = (subject.images[:wanted], subject.labels[:wanted])
    say(f"augment: {a.k} real digits per class alone and plus {wanted} of these, {a.seeds} seeds")
    per_seed = []
    for seed in range(cfg.seed, cfg.seed + a.seeds):
        real = lift.real_per_class(train.images, train.labels, train.num_classes, a.k, seed)
        per_seed.append(lift.compare(real, synthetic, (test.images, test.labels), scorer.classifier_kwargs, a.steps,
                                     cfg.tstr.batch_size, seed, scorer.device))
    return {"k": a.k, "ratio": a.ratio, "real_digits": a.k * train.num_classes, "synthetic_digits": wanted,
            "steps": a.steps, "seeds": a.seeds, **lift.summarize(per_seed)}


def _read_baseline(cfg: config.EvaluateJob, classifier) -> torch.nn.Module | None:
    """Phase 1b: the baseline generator file, when baseline= names one."""
    if cfg.baseline in ("class-means", "none"):
        return None
    from job.models import load_generator

    baseline, _, _ = load_generator(cfg.baseline)
    if baseline.output_shape[0] != classifier.channels or not baseline.num_classes:
        raise BadInput(f"baseline={cfg.baseline} must be a class-conditional generator of "
                       f"{classifier.channels}-channel images")
    return baseline


def _score_rows(cfg: config.EvaluateJob, scorer: Scorer, subject: _Subject, baseline, train: loading.Split,
                test: loading.Split, device: torch.device, precision_mode: str, say) -> dict:
    """Phase 3: one row per scored set: the subject, the real floor, the baseline."""
    wanted = max(cfg.n, cfg.tstr.n)
    name = "generator" if subject.generator is not None else "samples"
    rows = {}
    say(f"scoring {name}")
    images, labels = subject.images, subject.labels
    rows[name] = scorer.row(images[: cfg.n], labels[: cfg.n], images[: cfg.tstr.n], labels[: cfg.tstr.n], name)

    say("scoring the real floor")
    gen = torch.Generator().manual_seed(seeds.stream_seed(cfg.seed, 0x7E57))
    test_idx = torch.randperm(len(test.labels), generator=gen)[: cfg.n]
    tstr_idx = torch.randperm(len(train.labels), generator=gen)[: cfg.tstr.n]
    rows["real"] = scorer.row(test.images[test_idx], test.labels[test_idx], train.images[tstr_idx],
                              train.labels[tstr_idx], "the real test split")
    if cfg.baseline != "none":
        name = "class-means" if cfg.baseline == "class-means" else "baseline"
        say(f"scoring the {name} row")
        reference = class_means_model(train, scorer.classifier.image_size) if baseline is None else baseline
        ref_images, ref_labels = generated_digits(reference.to(device), wanted, cfg.seed, cfg.batch_size, device,
                                                  precision_mode)
        rows[name] = scorer.row(ref_images[: cfg.n], ref_labels[: cfg.n], ref_images[: cfg.tstr.n],
                                ref_labels[: cfg.tstr.n], f"the {name} row")
    return rows


def main(cfg: config.EvaluateJob) -> int:
    """Phase 1: the classifier, the shard set's manifest (with samples=) and the output
    folder, checked before anything is written; then the report of the set's layout (a
    generator draws single digits)."""
    classifier, classifier_info, _ = scoring.load_classifier(cfg.classifier)
    manifest = read_manifest(cfg.samples) if cfg.samples else None
    out = default_out(cfg)
    storage.check_writable(out)
    layout = layouts.named(manifest.get("layout") if manifest else None)
    return layout.function("evaluate")(cfg, manifest, out, classifier, classifier_info)


def evaluate_digits(cfg: config.EvaluateJob, manifest: dict | None, out: str, classifier,
                    classifier_info: dict) -> int:
    """The report on single digits: a generator's, or a shard set's of layout=digits."""
    started = time.perf_counter()
    wanted = max(cfg.n, cfg.tstr.n, synthetic_count(cfg, classifier.num_classes))
    subject = _read_subject(cfg, classifier, manifest, wanted)
    _check_augment(cfg, subject, classifier.num_classes)
    if cfg.longtail.profile != "none" and not subject.generator.num_classes:
        raise BadInput(f"longtail.profile draws the digits each class lacks: {cfg.generator} is unconditional; "
                       "use a class-conditional generator")
    baseline = _read_baseline(cfg, classifier)

    acc, precision = runtime.make_accelerator(
        cfg.precision, deterministic=True,
        unmeasured="fp32: a shard set is scored as it is, nothing is generated (scoring is always fp32)")
    device = acc.device
    if subject.generator is not None:
        precision = generation_precision(cfg.precision, subject.generator, subject.record, cfg.batch_size, acc)
        precision.apply()
    if not acc.is_main_process:  # one process does the whole evaluation
        acc.wait_for_everyone()
        return 0
    classifier = classifier.to(device)
    say = lambda msg: console.say(f"{msg}")  # noqa: E731
    say(f"{runtime.describe(acc, precision)}; writing to {out}")
    # Phase 2: the real data, and the subject's digits when it is a generator.
    train = loading.load_split(cfg.data, train=True)
    test = loading.load_split(cfg.data, train=False)
    if train.num_classes != classifier.num_classes:
        raise BadInput(f"the classifier knows {classifier.num_classes} classes but {cfg.data.name} "
                       f"has {train.num_classes}")
    if subject.generator is not None:
        say(f"generating {wanted} digits")
        subject.images, subject.labels = generated_digits(subject.generator.to(device), wanted, cfg.seed,
                                                          cfg.batch_size, device, precision.mode)

    scorer = Scorer(cfg, classifier, classifier_info["kwargs"], train, test, device)
    rows = _score_rows(cfg, scorer, subject, baseline, train, test, device, precision.mode, say)
    augment = _augment(cfg, scorer, subject, say)
    long_tail = None
    if cfg.longtail.profile != "none":
        lt = cfg.longtail
        long_tail = longtail.ask(subject.generator, train, test, lt.profile, cfg.data.profile_seed,
                                 scorer.classifier_kwargs, lt.steps, cfg.tstr.batch_size, cfg.seed, lt.seeds, device,
                                 precision.mode, lt.min_confidence, say)

    # Phase 4: the report, its Markdown and a grid of the subject's digits.
    report = {
        "format": REPORT_FORMAT,
        "version": 1,
        "subject": subject.record,
        "n": cfg.n,
        "k": cfg.k,
        "tstr": {"n": cfg.tstr.n, "epochs": cfg.tstr.epochs, "batch_size": cfg.tstr.batch_size},
        "classifier": {"uri": cfg.classifier, **classifier_info["extra"]},
        "data": {"name": cfg.data.name},
        "device": runtime.describe(acc, precision),
        "generated_in": precision.name,  # the digits' precision; scoring is always fp32
        "rows": rows,
        "augment": augment,
        "longtail": long_tail,
        "config": config.to_dict(cfg),
    }
    report["wall_s"] = round(time.perf_counter() - started, 1)
    grid = sample_grid(subject.images[: cfg.n], subject.labels[: cfg.n], train.num_classes)
    write_report(out, report, report_markdown(report), grid)
    acc.wait_for_everyone()
    return 0

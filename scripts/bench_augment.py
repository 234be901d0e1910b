"""Augmentation benchmark: what synthetic digits add to a classifier trained on real ones.

    .venv/bin/python scripts/bench_augment.py               # both parts (slow: see README Benchmarks)
    .venv/bin/python scripts/bench_augment.py --part low    # only the low-data rows
    .venv/bin/python scripts/bench_augment.py --part full   # only the full-data rows

Every row trains a fresh classifier with the shipped recipe (job/evaluation/lift.py: the classifier-mnist
network, Adam with warm-up and cosine decay, its random affine jitter) for the same number of
steps, and tests it on the 10,000 MNIST test digits; each row is run with 3 seeds.

Low data, for k = 10, 100, 1000 real digits per class and each seed:
  1. the real subset (lift.real_per_class: k per class of the train split, drawn by the seed)
     is written as an image folder;
  2. `job train --config quickstart data.name=imagefolder` trains a conditional generator on
     that folder alone (no peeking at the rest of MNIST);
  3. `job sample` draws max(ratios) x 10k labeled digits from it;
  4. classifiers: the k-per-class subset alone, and plus ratio x 10k synthetic digits (the
     first of the sample set) for each ratio;
  5. the filter, without peeking: that real-alone classifier, saved as a classifier file,
     judges `job sample min_confidence=--low-filter` of 10k more digits: plus those (ratio 1).
Full data, each seed: 60,000 real alone, plus 60,000 or 600,000 synthetic digits from the
quality preset's generator (`job train --config quality-cpu`), sampled with and without
min_confidence (the 60,000 are the first six shards of the 600,000: shard i depends only on
the seed and i).

Resumable: stage times go to <work>/seconds.json and each classifier's accuracy to
<work>/rows.json; a rerun skips what is done. Writes bench-results/augment-<device>.json
(low-data rows carry k, ratio and lift_points) and prints README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import benchlib

KS = [10, 100, 1000]
RATIOS = (1, 4)
SEEDS = [0, 1, 2]
FULL_SYNTHETIC = (60_000, 600_000)
TARGET_LIFT_POINTS = 1.0  # at k = 10 and k = 100, mean of 3 seeds


class Rows:
    """Classifier accuracies by row name, kept in <work>/rows.json (with their seconds)."""

    def __init__(self, work: Path):
        self.path = work / "rows.json"
        self.done = json.loads(self.path.read_text()) if self.path.exists() else {}

    def accuracy(self, name: str, train) -> float:
        if name not in self.done:
            started = time.perf_counter()
            accuracy = train()
            self.done[name] = {"accuracy": accuracy, "seconds": round(time.perf_counter() - started, 1)}
            self.path.write_text(json.dumps(self.done, indent=1))
            print(f"  {name}: {100 * accuracy:.2f}% ({self.done[name]['seconds']:.0f} s)", flush=True)
        return self.done[name]["accuracy"]

    def seconds(self) -> float:
        return sum(r["seconds"] for r in self.done.values())


def write_image_folder(images, labels, folder: Path) -> None:
    """<folder>/<class>/<n>.png: what `data.name=imagefolder` trains on."""
    from PIL import Image

    tmp = folder.with_name(folder.name + ".tmp")
    for n, (image, label) in enumerate(zip(images, labels)):
        (tmp / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(tmp / str(int(label)) / f"{n:05d}.png")
    tmp.rename(folder)


class Bench:
    def __init__(self, args, work: Path):
        import torch

        from job.core import config
        from job.data import loading
        from job.training.classifier import classifier_kwargs

        self.args, self.work = args, work
        self.stage, self.rows = benchlib.Stages(work), Rows(work)
        data_cfg = config.DataConfig()
        self.train, self.test = loading.load_split(data_cfg, train=True), loading.load_split(data_cfg, train=False)
        recipe = config.load("train", "classifier-mnist", [])
        self.kwargs = classifier_kwargs(1, 10, recipe.model.width, recipe.model.feature_dim, 28)
        self.batch_size = recipe.train.batch_size
        self.torch = torch

    def accuracy(self, name: str, images, labels, steps: int, seed: int) -> float:
        from job.evaluation import lift

        return self.rows.accuracy(name, lambda: lift.trained_accuracy(
            images, labels, self.test.images, self.test.labels, self.kwargs, steps, self.batch_size, seed, "cpu"))

    def judge(self, path: Path, real, seed: int) -> None:
        """The real-alone classifier of this (k, seed) as a classifier file: the same recipe,
        data and seed as its row, so the same network. It filters the generator's digits
        without peeking at the rest of MNIST (the shipped classifier saw all of it)."""
        if path.exists():
            return
        from job.models.files import export_model
        from job.training.classifier import ARCH, fit

        model = fit(*real, self.kwargs, self.args.low_steps, batch_size=self.batch_size, seed=seed, device="cpu")
        export_model(str(path), model.state_dict(), kind="classifier", arch=ARCH, kwargs=self.kwargs,
                                step=self.args.low_steps, extra={"trained_on": f"{len(real[1])} real digits"})

    def synthetic(self, folder: Path, n: int):
        from job.shardsets.sets import read_manifest, shard_set_digits

        return shard_set_digits(str(folder), read_manifest(str(folder)), n)

    def low_data(self) -> list[dict]:
        from job.evaluation import lift

        a, torch, out = self.args, self.torch, []
        filtered = f"min_confidence={a.low_filter}"
        for k in KS:
            per_seed = {r: [] for r in (*RATIOS, filtered)}
            for seed in SEEDS:
                real = lift.real_per_class(self.train.images, self.train.labels, 10, k, seed)
                here = self.work / "low" / f"k{k}-seed{seed}"
                folder, gan, digits = here / "real", here / "generator", here / "digits"
                if not folder.exists():
                    write_image_folder(*real, folder)
                steps = a.gan_steps[KS.index(k)]
                self.stage(f"k{k}/seed{seed}/train", benchlib.trained_to(gan, steps),
                           "train", "--config", "quickstart", "data.name=imagefolder", f"data.root={folder}",
                           f"run.dir={gan}", f"train.steps={steps}", f"seed={seed}", "train.progress=false")
                count = max(RATIOS) * k * 10
                self.stage(f"k{k}/seed{seed}/sample", (digits / "manifest.json").exists(),
                           "sample", f"generator={gan / 'generator.safetensors'}", f"count={count}", f"out={digits}",
                           f"seed={seed}", "progress=false")
                synthetic = self.synthetic(digits, count)
                alone = self.accuracy(f"k{k}/seed{seed}/real", *real, a.low_steps, seed)
                for ratio in RATIOS:
                    m = ratio * k * 10
                    mixed = self.accuracy(f"k{k}/seed{seed}/ratio{ratio}", torch.cat([real[0], synthetic[0][:m]]),
                                          torch.cat([real[1], synthetic[1][:m]]), a.low_steps, seed)
                    per_seed[ratio].append(lift.seed_row(alone, mixed))
                # Ratio 1 again, each digit kept only when the real-alone classifier agrees.
                judge, kept = here / "judge.safetensors", here / f"digits-min-confidence-{a.low_filter}"
                self.judge(judge, real, seed)
                try:
                    self.stage(f"k{k}/seed{seed}/sample-{filtered}", (kept / "manifest.json").exists(),
                               "sample", f"generator={gan / 'generator.safetensors'}", f"count={k * 10}",
                               f"out={kept}", f"seed={seed}", f"min_confidence={a.low_filter}",
                               f"classifier={judge}", "progress=false")
                except subprocess.CalledProcessError as e:
                    if e.returncode != 2:
                        raise
                    print(f"  k{k}/seed{seed}: the filter refused this generator (exit 2, above)", flush=True)
                    continue  # too few digits pass: no filtered row for this seed
                clean = self.synthetic(kept, k * 10)
                mixed = self.accuracy(f"k{k}/seed{seed}/ratio1-{filtered}", torch.cat([real[0], clean[0]]),
                                      torch.cat([real[1], clean[1]]), a.low_steps, seed)
                per_seed[filtered].append(lift.seed_row(alone, mixed))
            for ratio in [r for r in per_seed if per_seed[r]]:
                summary = lift.summarize(per_seed[ratio])
                m = ratio if ratio in RATIOS else 1
                out.append({"k": k, "ratio": m, "filter": "none" if ratio in RATIOS else
                            f"{filtered} (judge: the real-alone classifier)",
                            "real_digits": 10 * k, "synthetic_digits": m * 10 * k,
                            "gan_steps": a.gan_steps[KS.index(k)], "classifier_steps": a.low_steps,
                            "real_accuracy": summary["real"], "mixed_accuracy": summary["real_plus_synthetic"],
                            "lift_points": summary["lift_points"]["mean"],
                            "lift_points_spread": summary["lift_points"]})
        return out

    def full_data(self) -> list[dict]:
        from job.evaluation import lift

        a, torch = self.args, self.torch
        gan = self.work / "full" / "quality-generator"
        steps = a.quality_steps
        self.stage("full/train", benchlib.trained_to(gan, steps), "train", "--config", "quality-cpu",
                   f"run.dir={gan}", f"train.steps={steps}", "train.progress=false")
        sets = {}
        for name, extra in (("unfiltered", []), (f"min_confidence={a.min_confidence}",
                                                   [f"min_confidence={a.min_confidence}"])):
            folder = self.work / "full" / ("digits" if not extra else "digits-confident")
            self.stage(f"full/sample/{name}", (folder / "manifest.json").exists(), "sample",
                       f"generator={gan / 'generator.safetensors'}", f"count={max(FULL_SYNTHETIC)}", f"out={folder}",
                       "progress=false", *extra)
            sets[name] = folder
        real = (self.train.images, self.train.labels)
        rows, alone = [], {}
        for seed in SEEDS:
            alone[seed] = self.accuracy(f"full/seed{seed}/real", *real, a.full_steps, seed)
        for name, folder in sets.items():
            synthetic = self.synthetic(folder, max(FULL_SYNTHETIC))
            for m in FULL_SYNTHETIC:
                per_seed = []
                for seed in SEEDS:
                    mixed = self.accuracy(f"full/seed{seed}/{name}/{m}", torch.cat([real[0], synthetic[0][:m]]),
                                          torch.cat([real[1], synthetic[1][:m]]), a.full_steps, seed)
                    per_seed.append(lift.seed_row(alone[seed], mixed))
                summary = lift.summarize(per_seed)
                rows.append({"real_digits": 60_000, "synthetic_digits": m, "filter": name,
                             "classifier_steps": a.full_steps, "real_accuracy": summary["real"],
                             "mixed_accuracy": summary["real_plus_synthetic"],
                             "lift_points": summary["lift_points"]["mean"],
                             "lift_points_spread": summary["lift_points"]})
        return rows


def pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["low", "full", "all"], default="all")
    p.add_argument("--ks", type=int, nargs="+", default=KS, help="real digits per class of the low-data rows")
    p.add_argument("--gan-steps", type=int, nargs="+", default=[500, 700, 1000],
                   help="generator training steps for each k (quickstart architecture, batch 64)")
    p.add_argument("--seeds", type=int, default=len(SEEDS))
    p.add_argument("--low-steps", type=int, default=400, help="classifier steps per low-data row (batch 128)")
    p.add_argument("--full-steps", type=int, default=1400, help="classifier steps per full-data row (batch 128)")
    p.add_argument("--quality-steps", type=int, default=None, help="default: the quality-cpu preset's")
    p.add_argument("--min-confidence", type=float, default=0.9, help="the full-data filter (shipped classifier)")
    p.add_argument("--low-filter", type=float, default=0.5,
                   help="min_confidence of the low-data filtered row (judge: that seed's real-alone classifier)")
    p.add_argument("--work", default="runs/bench-augment")
    p.add_argument("--results", default=str(benchlib.RESULTS), help="folder of the results JSON")
    args = p.parse_args()
    if len(args.gan_steps) != len(args.ks):
        p.error("give one --gan-steps per k")
    KS[:], SEEDS[:] = args.ks, range(args.seeds)
    benchlib.use_default_data_dir()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    from job.core import config

    args.quality_steps = args.quality_steps or config.load("train", "quality-cpu", []).train.steps
    work = benchlib.REPO / args.work  # a relative --work is under the repository
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench = Bench(args, work)
    results_path = Path(args.results) / f"augment-{benchlib.device_tag()}.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    low = bench.low_data() if args.part in ("low", "all") else previous.get("low_data", [])
    full = bench.full_data() if args.part in ("full", "all") else previous.get("full_data", [])
    met = {f"k={r['k']} ratio={r['ratio']} filter={r['filter']}": r["lift_points"] >= TARGET_LIFT_POINTS
           for r in low if r["k"] in (10, 100)}
    path = benchlib.write_results("augment", {
        "settings": {"ks": KS, "ratios": RATIOS, "seeds": list(SEEDS), "gan_steps": args.gan_steps,
                     "low_steps": args.low_steps, "full_steps": args.full_steps,
                     "quality_steps": args.quality_steps, "min_confidence": args.min_confidence,
                     "low_filter": args.low_filter,
                     "classifier_batch_size": bench.batch_size},
        "low_data": low,
        "full_data": full,
        "target": f"real + synthetic beats real alone by >= {TARGET_LIFT_POINTS} point at k = 10 and 100",
        "met": met,
        "seconds": {"stages": {k: round(v, 1) for k, v in bench.stage.seconds.items()},
                    "classifiers": round(bench.rows.seconds(), 1),
                    "this_run": round(time.perf_counter() - started, 1)},
    }, Path(args.results))
    print("\n| real digits | synthetic | test accuracy, real alone | real + synthetic | lift (points) |")
    print("|---|---|---|---|---|")
    for r in low:
        kept = "" if r["filter"] == "none" else f", {r['filter'].split(' ')[0]}"
        print(f"| {r['real_digits']:,} (k={r['k']}) | {r['synthetic_digits']:,} (ratio {r['ratio']}{kept}) | "
              f"{pct(r['real_accuracy'])} | {pct(r['mixed_accuracy'])} | "
              f"{r['lift_points']:+.2f} ± {r['lift_points_spread']['std']:.2f} |")
    for r in full:
        print(f"| 60,000 | {r['synthetic_digits']:,} ({r['filter']}) | {pct(r['real_accuracy'])} | "
              f"{pct(r['mixed_accuracy'])} | {r['lift_points']:+.2f} ± {r['lift_points_spread']['std']:.2f} |")
    print(f"\ntarget met: {met}\nwrote {path}")


if __name__ == "__main__":
    main()

"""Quality benchmark: train the conditional DCGAN with a named preset, sample, evaluate.

    .venv/bin/python scripts/bench_quality.py                       # quality-cpu (2-core CPU, <= 30 min training)
    .venv/bin/python scripts/bench_quality.py --preset quality-gpu  # the longer GPU preset

Every stage is the real command line (`python -m job train|sample|evaluate`), so the figures
are what a user gets:
  1. train the conditional generator with the preset (timed: the training wall time);
  2. train the unconditional generator (same preset, UNCONDITIONAL overrides, --uncond-steps);
  3. sample 60,000 labeled digits from the conditional generator into shards;
  4. evaluate those shards (n=10,000 for the metrics, TSTR on all 60,000) against real MNIST;
  5. evaluate the unconditional generator (class balance, FID, IS, precision/recall).
Writes bench-results/quality-<preset>-<device>.json and prints the README table. Targets
(issue 5): CPU CAS >= 97%, TSTR >= 96%, every unconditional class share in [8%, 12%];
GPU CAS >= 99%, TSTR >= 98.5%.

Resumable: work folders are kept under --work with the seconds each stage took
(seconds.json). A rerun skips finished stages and reuses their times; a training stage
asked for more steps continues from its last checkpoint (exactly: resume is bit-exact)
and adds its time. --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import benchlib

TARGETS = {
    "quality-cpu": {"cas": 0.97, "tstr": 0.96, "class_share_min": 0.08, "class_share_max": 0.12,
                    "train_minutes_max": 30},
    "quality-gpu": {"cas": 0.99, "tstr": 0.985, "class_share_min": 0.08, "class_share_max": 0.12},
}


# The unconditional model: the preset with labels off, and a minibatch-std feature in D.
# Without it, 18,000 steps left class shares at 6.0%-13.7% (10,000 steps: 4.9%-16.9%):
# an unconditional G under-draws hard classes (2, 1) and over-draws 0.
UNCONDITIONAL = ["model.conditional=false", "model.minibatch_std=true"]


def figures(row: dict) -> dict:
    keys = ("fid", "inception_score", "cas", "tstr", "precision", "recall", "class_share_min", "class_share_max")
    return {k: (round(row[k], 4) if isinstance(row[k], float) else row[k]) for k in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quality-cpu")
    p.add_argument("--uncond-steps", type=int, default=None, help="default: the preset's steps")
    p.add_argument("--count", type=int, default=60000, help="digits sampled (and TSTR training set size)")
    p.add_argument("--n", type=int, default=10000, help="digits scored per row")
    p.add_argument("--work", default="runs/bench-quality")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")
    args = p.parse_args()
    benchlib.use_default_data_dir()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

    work = (benchlib.REPO / args.work / args.preset).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    cond, uncond, digits = work / "cond", work / "uncond", work / "cond-digits"
    from job.core import config

    steps = config.load("train", args.preset, []).train.steps
    uncond_steps = args.uncond_steps or steps
    quiet = ["train.progress=false"]
    stage = benchlib.Stages(work)
    stage("train_conditional", benchlib.trained_to(cond, steps),
          "train", "--config", args.preset, f"run.dir={cond}", *quiet)
    stage("train_unconditional", benchlib.trained_to(uncond, uncond_steps),
          "train", "--config", args.preset, f"run.dir={uncond}", *UNCONDITIONAL,
          f"train.steps={uncond_steps}", *quiet)
    stage("sample", (digits / "manifest.json").exists() and "train_conditional" not in stage.ran,
          "sample", f"generator={cond / 'generator.safetensors'}", f"count={args.count}", f"out={digits}",
          "progress=false")
    stage("evaluate_conditional", (cond / "eval" / "report.json").exists() and "sample" not in stage.ran,
          "evaluate", f"samples={digits}", f"n={args.n}", f"tstr.n={args.count}", f"out={cond / 'eval'}")
    stage("evaluate_unconditional",
          (uncond / "eval" / "report.json").exists() and "train_unconditional" not in stage.ran,
          "evaluate", f"generator={uncond / 'generator.safetensors'}", f"n={args.n}", "tstr.n=0",
          "baseline=none", f"out={uncond / 'eval'}")
    seconds = stage.seconds

    cond_report = json.loads((cond / "eval" / "report.json").read_text())
    uncond_report = json.loads((uncond / "eval" / "report.json").read_text())
    rows = {
        "conditional (60k sampled)": figures(cond_report["rows"]["samples"]),
        "unconditional": figures(uncond_report["rows"]["generator"]),
        "real (floor)": figures(cond_report["rows"]["real"]),
        "class-means baseline": figures(cond_report["rows"]["class-means"]),
    }
    target = TARGETS.get(args.preset, {})
    c, u = rows["conditional (60k sampled)"], rows["unconditional"]
    checks = {}
    if target:
        checks = {
            "cas": c["cas"] >= target["cas"],
            "tstr": c["tstr"] >= target["tstr"],
            "unconditional_class_balance": u["class_share_min"] >= target["class_share_min"]
            and u["class_share_max"] <= target["class_share_max"],
        }
        if "train_minutes_max" in target:
            checks["train_time"] = seconds["train_conditional"] <= 60 * target["train_minutes_max"]
    path = benchlib.write_results(f"quality-{args.preset}", {
        "preset": args.preset,
        "steps": {"conditional": steps, "unconditional": uncond_steps},
        "unconditional_overrides": UNCONDITIONAL,
        "device": cond_report["device"],
        "count": args.count,
        "n": args.n,
        "tstr": cond_report["tstr"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": rows,
        "targets": target,
        "met": checks,
    })
    print()
    print("| row | FID | IS | CAS | TSTR | precision | recall | class share min / max |")
    print("|---|---|---|---|---|---|---|---|")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    for name, r in rows.items():
        print(f"| {name} | {r['fid']:.2f} | {r['inception_score']:.2f} | {pct(r['cas'])} | {pct(r['tstr'])} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {pct(r['class_share_min'])} / {pct(r['class_share_max'])} |")
    print(f"\ntraining: conditional {seconds['train_conditional'] / 60:.1f} min, unconditional "
          f"{seconds['train_unconditional'] / 60:.1f} min; targets met: {checks}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

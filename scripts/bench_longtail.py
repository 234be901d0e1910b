"""Long-tail benchmark: do a generator's digits of the rare classes help more than what a user
tries first? For each long-tail profile of MNIST's training split:

  1. `job train --config cdcgan-mnist data.profile=<profile>` trains a class-conditional
     generator on the long-tailed set alone (no outside data);
  2. `job evaluate longtail.profile=<profile>` trains the shipped classifier recipe five ways,
     over --seeds seeds: the long-tailed set alone, class-balanced oversampling, loss
     reweighting, topped up to balance with the generator's digits, and topped up with only
     those the real-alone classifier recognizes (job/evaluation/longtail.py);
  3. the rows, each arm's rare-class / balanced / overall accuracy (mean, std, per seed), and
     `rare_lift` (the synthetic arms' rare-class accuracy over the best baseline, in points)
     go to bench-results/longtail-<device>.json, with the run time, and a PNG of per-class
     accuracy, real alone against topped up, to bench-results/longtail-<device>.png.

    .venv/bin/python scripts/bench_longtail.py                 # exp100 and step:2,5,8@0.01 (slow)
    .venv/bin/python scripts/bench_longtail.py --profiles exp100 --gan-steps 500 --seeds 3

Resumable: each stage's wall time is kept in <work>/seconds.json, and a finished stage is skipped.
Target: on each profile, synthetic rebalancing beats the best baseline on the rare classes by at
least 1 point with mean - 2 std > 0; the JSON says whether it was met, and by how much not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import benchlib

PROFILES = ("exp100", "step:2,5,8@0.01")
TARGET_POINTS = 1.0


def plot(path: Path, rows: dict) -> None:
    """Per-class test accuracy, the long-tailed set alone (grey) against topped up with the
    generator's digits (black), one panel per profile."""
    from PIL import Image, ImageDraw

    width, height, pad = 420, 180, 24
    image = Image.new("L", (width, (height + pad) * len(rows) + pad), 255)
    draw = ImageDraw.Draw(image)
    for i, (profile, row) in enumerate(rows.items()):
        top = pad + i * (height + pad)
        draw.text((8, top - 18), f"{profile}: per-class test accuracy, real alone (grey) vs topped up (black)", fill=0)
        draw.rectangle((30, top, width - 10, top + height), outline=0)
        arms = row["arms"]
        for c in range(len(row["counts"])):
            x = 36 + c * (width - 50) // len(row["counts"])
            for k, (arm, shade) in enumerate((("real", 160), ("synthetic", 0))):
                h = int(height * arms[arm]["per_class"][c])
                draw.rectangle((x + 14 * k, top + height - h, x + 14 * k + 12, top + height), fill=shade)
            draw.text((x + 8, top + height + 2), str(c), fill=0)
    image.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="+", default=list(PROFILES))
    p.add_argument("--gan-steps", type=int, default=3000, help="generator training steps (cdcgan-mnist)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="classifier steps per arm")
    p.add_argument("--min-confidence", type=float, default=0.9)
    p.add_argument("--n", type=int, default=2000, help="digits per row of the evaluate report's other rows")
    p.add_argument("--work", type=Path, default=Path("runs/bench-longtail"))
    p.add_argument("--results", type=Path, default=benchlib.RESULTS)
    args = p.parse_args()
    benchlib.use_default_data_dir()
    stages = benchlib.Stages(args.work)
    started = time.perf_counter()
    rows = {}
    for profile in args.profiles:
        name = profile.replace(":", "-").replace(",", "_").replace("@", "-at-")
        run = args.work / name
        stages(f"train {profile}", benchlib.trained_to(run, args.gan_steps), "train", "--config", "cdcgan-mnist",
               f"data.profile={profile}", f"train.steps={args.gan_steps}", f"run.dir={run}", "train.progress=false",
               f"train.sample_every={args.gan_steps}", f"train.checkpoint_every={args.gan_steps}")
        report = run / "eval-longtail" / "report.json"
        stages(f"evaluate {profile}", report.exists(), "evaluate", f"generator={run / 'generator.safetensors'}",
               f"out={report.parent}", f"longtail.profile={profile}", f"longtail.seeds={args.seeds}",
               f"longtail.steps={args.steps}", f"longtail.min_confidence={args.min_confidence}", f"n={args.n}",
               f"tstr.n={args.n}", "baseline=none")
        lt = json.loads(report.read_text())["longtail"]
        for lift in lt["rare_lift"].values():
            lift["target_met"] = lift["mean"] >= TARGET_POINTS and lift["mean"] - 2 * lift["std"] > 0
        rows[profile] = lt
        print(f"{profile}: rare classes {lt['rare_classes']}", flush=True)
        for arm, r in lt["arms"].items():
            rare = r["rare_accuracy"]
            print(f"  {arm:20s} rare {100 * rare['mean']:6.2f} (± {100 * rare['std']:.2f})  balanced "
                  f"{100 * r['balanced_accuracy']['mean']:6.2f}  accuracy {100 * r['accuracy']['mean']:6.2f}",
                  flush=True)
        for arm, lift in lt["rare_lift"].items():
            print(f"  rare_lift {arm}: {lift['mean']:+.2f} points (± {lift['std']:.2f}) over {lift['over']}"
                  f"{'' if lift['target_met'] else '  (target not met)'}", flush=True)
    payload = {"gan_steps": args.gan_steps, "seeds": args.seeds, "classifier_steps": args.steps,
               "min_confidence": args.min_confidence, "target_points": TARGET_POINTS,
               "wall_s": round(time.perf_counter() - started, 1), "stage_seconds": stages.seconds, "profiles": rows}
    path = benchlib.write_results("longtail", payload, args.results)
    plot(path.with_suffix(".png"), rows)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()

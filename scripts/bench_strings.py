"""Digit strings: read-back accuracy of generated 6-digit numbers, and strings/s.

    .venv/bin/python scripts/bench_strings.py              # quality-cpu generator, 2,000 strings
    .venv/bin/python scripts/bench_strings.py --count 10000

Uses the quality benchmark's conditional generator (runs/bench-quality/quality-cpu/cond,
made by scripts/bench_quality.py; trained here with the same command when it is missing:
about 23 minutes on a 2-core CPU, bit-exact with the benchmark's). Then, as a user would:
  1. `python -m job sample layout=strings strings.length=6 count=N` (strings/s from the
     job's own timing; peak RSS polled);
  2. `python -m job evaluate samples=...`: every digit cut at its box and read by the
     shipped classifier: string and digit accuracy;
  3. the same with min_confidence=0.9 (digits the classifier doubts are redrawn).
Target (issue 10): string accuracy >= 95% for 6-digit strings. Writes
bench-results/strings-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from bench_quality import trained_to

import benchlib


def job(*args: str) -> tuple[str, int, float]:
    """Run `python -m job ...`; return (output, peak RSS bytes, wall s), exit on failure."""
    code, output, peak, wall = benchlib.run_watched([sys.executable, "-m", "job", *args])
    if code != 0:
        raise SystemExit(f"`python -m job {' '.join(args)}` failed ({code}):\n{output[-3000:]}")
    return output, peak, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=2000, help="strings sampled and read back")
    p.add_argument("--length", default="6")
    p.add_argument("--work", default="runs/bench-quality/quality-cpu")
    args = p.parse_args()
    benchlib.use_default_data_dir()
    work = (benchlib.REPO / args.work).resolve()
    generator = work / "cond" / "generator.safetensors"
    from job.core import config

    steps = config.load("train", "quality-cpu", []).train.steps
    # A generator file is exported at every checkpoint: only a finished run is the benchmark's.
    if not trained_to(work / "cond", steps):
        print(f"training the quality-cpu generator into {work / 'cond'} (about 23 minutes on 2 cores; "
              "continues a stopped run)", flush=True)
        job("train", "--config", "quality-cpu", f"run.dir={work / 'cond'}", "train.progress=false")
    results: dict = {"generator": str(generator.relative_to(benchlib.REPO)), "count": args.count,
                     "length": args.length, "runs": {}}
    for name, extra in (("plain", []), ("min_confidence=0.9", ["min_confidence=0.9"])):
        out = work / f"strings-{name.replace('=', '-')}"
        output, peak, wall = job("sample", f"generator={generator}", f"count={args.count}", f"out={out}",
                                 "layout=strings", f"strings.length={args.length}", "progress=false", *extra)
        rate = float(re.search(r"([\d.]+) strings/s", output).group(1))
        job("evaluate", f"samples={out}", f"n={args.count}", f"out={out / 'eval'}")
        report = json.loads((out / "eval" / "report.json").read_text())
        results["runs"][name] = {
            "strings_per_s": rate, "sample_wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "string_accuracy": round(report["string_accuracy"], 4),
            "digit_accuracy": round(report["digit_accuracy"], 4),
            "confusions": report["confusions"], "grid": str((out / "eval" / "grid.png").relative_to(benchlib.REPO)),
        }
        print(f"{name}: {rate:.0f} strings/s, string accuracy {100 * report['string_accuracy']:.2f}%, "
              f"digit accuracy {100 * report['digit_accuracy']:.2f}%", flush=True)
    path = benchlib.write_results("strings", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

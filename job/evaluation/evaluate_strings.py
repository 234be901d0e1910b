"""`evaluate samples=<a layout=strings shard set>`: read every string back.

    python -m job evaluate samples=runs/numbers [n=10000] [out=...]

Each digit is cut out at its known box, prepared the way MNIST digits are (cropped to its
ink, 20 px in a 28 px field, centred by mass) and classified with the project's classifier.
Reported: digit accuracy (digits read as written), string accuracy (strings read exactly),
both by string length, and the most frequent confusions. Files: report.json, report.md and
grid.png (the first strings, as generated) in `out` (default <samples>/eval).
"""

from __future__ import annotations

import collections
import io
import time

import numpy as np
import torch

from job.core import config, console, runtime
from job.core.errors import BadInput
from job.data import digit_image
from job.models import scoring
from job.shardsets import formats
from job.shardsets.sets import manifest_uri, verified_shard_files
from job.storage.reports import write_report

REPORT_FORMAT = "digit-job/strings-report"


def read_strings(uri: str, manifest: dict, n: int) -> list[tuple[torch.Tensor, str, list[list[int]]]]:
    """Up to n (image, text, boxes) of a strings shard set, each file checked against the manifest."""
    where = manifest_uri(uri)
    items: list = []
    for record in manifest["shards"]:
        if len(items) >= n:
            break
        items.extend(formats.decode_strings(manifest["shard_format"], verified_shard_files(uri, record, where)))
    return items[:n]


def without_neighbours(crop: np.ndarray, left_shared: bool, right_shared: bool) -> np.ndarray:
    """The crop with the strokes of neighbouring digits removed.

    Where boxes overlap, a cut also holds pieces of the neighbours' strokes: small blobs
    that touch the cut's edge on the neighbour's side. The digit's own ink is its largest
    blob and whatever else is sizeable or away from those edges."""
    from scipy import ndimage

    blobs, count = ndimage.label(crop > 0, structure=np.ones((3, 3)))
    if count <= 1 or not (left_shared or right_shared):
        return crop
    masses = ndimage.sum(crop, blobs, index=np.arange(1, count + 1))
    largest = masses.max()
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    for b in range(1, count + 1):
        columns = np.nonzero((blobs == b).any(axis=0))[0]
        at_shared_edge = (left_shared and columns[0] == 0) or (right_shared and columns[-1] == crop.shape[1] - 1)
        if at_shared_edge and masses[b - 1] < 0.25 * largest:
            keep[b] = False
    return np.where(keep[blobs], crop, 0.0)


def cut_digits(image: torch.Tensor, boxes: list[list[int]], size: int) -> np.ndarray:
    """uint8 [len(boxes), size, size]: each boxed digit prepared like an MNIST digit."""
    ink = image.float().amax(dim=0).numpy() / 255.0
    out = np.zeros((len(boxes), size, size), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        crop = ink[y0:y1, x0:x1].copy()
        crop[crop < digit_image.INK_THRESHOLD] = 0.0
        left_shared = i > 0 and boxes[i - 1][2] > x0  # the previous digit's box reaches into this one
        right_shared = i + 1 < len(boxes) and boxes[i + 1][0] < x1
        crop = without_neighbours(crop, left_shared, right_shared)
        try:
            out[i] = digit_image.center_like_mnist(crop, size)
        except digit_image.NoDigit:
            pass  # an empty cut reads as whatever the classifier makes of a blank field
    return out


def strings_grid(items, rows: int = 16) -> bytes:
    """PNG of the first strings, one per row, left-aligned on black."""
    chosen = [image.amax(dim=0) for image, _, _ in items[:rows]]
    width = max(im.shape[-1] for im in chosen)
    stacked = torch.cat([torch.nn.functional.pad(im, (0, width - im.shape[-1], 2, 2)) for im in chosen])
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(stacked.numpy()).save(buf, format="PNG")
    return buf.getvalue()


def report_markdown(report: dict) -> str:
    lines = [f"# Strings read back: {report['subject']['uri']}", "",
             f"{report['strings']} strings, {report['digits']} digits, read with {report['classifier']['uri']}.", "",
             "| | digit accuracy | string accuracy | strings |", "|---|---|---|---|",
             f"| all | {100 * report['digit_accuracy']:.2f}% | {100 * report['string_accuracy']:.2f}% "
             f"| {report['strings']} |"]
    for length, row in sorted(report["by_length"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {length} digits | {100 * row['digit_accuracy']:.2f}% | {100 * row['string_accuracy']:.2f}% "
                     f"| {row['strings']} |")
    if report["confusions"]:
        lines += ["", "Most frequent confusions (written -> read): "
                  + ", ".join(f"{c['written']}->{c['read']} ({c['count']})" for c in report["confusions"])]
    if report["misread_examples"]:
        lines += ["", "First misread strings: "
                  + ", ".join(f"{e['text']} read as {e['read']}" for e in report["misread_examples"])]
    return "\n".join(lines) + "\n"


def evaluate(cfg: config.EvaluateJob, manifest: dict, out: str, classifier, classifier_info: dict) -> int:
    """The report on a set of layout=strings, called by evaluate.main (through
    job/shardsets/layouts.py) with the checked manifest, output folder and classifier."""
    if cfg.augment.k:
        raise BadInput("augment.k asks about single digits: samples= holds strings (layout=strings)")
    started = time.perf_counter()
    items = read_strings(cfg.samples, manifest, cfg.n)
    if not items:
        raise BadInput(f"samples={cfg.samples} holds no strings")
    acc, precision = runtime.make_accelerator("no")
    if not acc.is_main_process:  # one process does the whole evaluation
        acc.wait_for_everyone()
        return 0
    say = lambda msg: console.say(f"{msg}")  # noqa: E731
    say(f"{runtime.describe(acc, precision)}; reading {len(items)} strings back, writing to {out}")
    size = classifier.image_size
    cuts = np.concatenate([cut_digits(image, boxes, size) for image, _, boxes in items])
    glyphs = torch.from_numpy(cuts)[:, None].expand(-1, classifier.channels, -1, -1).contiguous()
    read = scoring.score(classifier.to(acc.device), glyphs, cfg.batch_size, acc.device).predictions.tolist()

    by_length: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0])  # strings, right, digits right
    confusions: collections.Counter = collections.Counter()
    misread, at, digits_right = [], 0, 0
    for _, text, _ in items:
        got = "".join(str(d) for d in read[at : at + len(text)])
        at += len(text)
        right = sum(a == b for a, b in zip(text, got))
        digits_right += right
        row = by_length[len(text)]
        row[0] += 1
        row[1] += got == text
        row[2] += right
        confusions.update((a, b) for a, b in zip(text, got) if a != b)
        if got != text and len(misread) < 10:
            misread.append({"text": text, "read": got})
    total_digits = sum(len(text) for _, text, _ in items)
    report = {
        "format": REPORT_FORMAT,
        "version": 1,
        "subject": {"uri": cfg.samples, "kind": "strings", "count": manifest.get("count"),
                    "generator": manifest.get("generator"), "strings": manifest.get("strings")},
        "classifier": {"uri": cfg.classifier, **classifier_info["extra"]},
        "strings": len(items),
        "digits": total_digits,
        "digit_accuracy": digits_right / total_digits,
        "string_accuracy": sum(r[1] for r in by_length.values()) / len(items),
        "by_length": {str(k): {"strings": v[0], "string_accuracy": v[1] / v[0], "digit_accuracy": v[2] / (v[0] * k)}
                      for k, v in sorted(by_length.items())},
        "confusions": [{"written": a, "read": b, "count": c} for (a, b), c in confusions.most_common(5)],
        "misread_examples": misread,
        "config": config.to_dict(cfg),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_report(out, report, report_markdown(report), strings_grid(items))
    acc.wait_for_everyone()
    return 0

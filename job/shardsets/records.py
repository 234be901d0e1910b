"""Writing a shard set: its plan, one record per finished shard, and the manifest.

`job sample` saves the plan (`_records/plan.json`: everything the set's bytes depend on)
before any shard, writes each shard's files and then its record
(`_records/shard-000123.json`: sizes, sha256, label histogram), and, once every shard has a
record, the manifest (job/shardsets/sets.py reads it back). A record marks its shard done,
the manifest the set: a rerun after any interruption skips what is recorded and completes
the set without duplicates or gaps. Imports nothing above storage.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields

import torch

from job import storage
from job.core import config, seeds
from job.core.errors import BadInput
from job.core.precision import display_name
from job.shardsets import layouts
from job.shardsets.sets import MANIFEST

RECORDS = "_records"
PLAN = "plan.json"


@dataclass
class Plan:
    """What the whole sampling job produces: identical for every worker, saved as plan.json."""

    generator_sha256: str
    generator_info: dict
    count: int
    shard_size: int
    format: str
    labels: str
    seed: int
    precision: str
    num_classes: int
    image_shape: list[int]  # [C, H, W]
    min_confidence: float = 0.0
    classifier_sha256: str = ""  # the judge of min_confidence (empty when it is 0)
    layout: str = "digits"
    strings: dict | None = None  # layout=strings: config.StringsConfig as a dict
    text: str | None = None  # layout=strings: the one text of every image
    texts_sha256: str = ""  # layout=strings: sha256 of the texts= file (a changed file is another job)
    # The bytes depend on the device kind (CPU and GPU kernels round differently), not on
    # batch_size or the number of workers (tests/test_precision.py shows both).
    device: str = "cpu"
    # balance=: {"source", "have", "target", "per_class"}; its per_class counts fix the labels
    # (job/sampling/balance.py). None for every other set.
    balance: dict | None = None

    @property
    def num_shards(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def shard_count(self, index: int) -> int:
        return min(self.shard_size, self.count - index * self.shard_size)

    @property
    def labeled(self) -> bool:
        return self.num_classes > 0

    def choices(self) -> list[int] | None:
        return config.label_choices(self.labels)


def record_uri(out: str, index: int) -> str:
    return storage.join(out, RECORDS, f"shard-{index:06d}.json")


def shard_done(out: str, index: int) -> bool:
    """A record exists and every file it lists has the recorded size."""
    if not storage.exists(record_uri(out, index)):
        return False
    try:
        record = json.loads(storage.read_bytes(record_uri(out, index)))
        return all(storage.size(storage.join(out, name)) == f["bytes"] for name, f in record["files"].items())
    except (ValueError, KeyError, TypeError):
        return False  # a torn or foreign record: the shard is made again


def write_shard(out: str, plan: Plan, index: int, content, drawn: int) -> dict:
    """Encode and store one shard, then its record (last: the record marks it done).
    `content` is (images, labels) of single digits, or a StringBatch."""
    layout = layouts.named(plan.layout)
    files = layout.encode(plan.format, index, content, plan.labeled)
    labels, count = layout.labels(content), layout.count(content)
    for name, blob in files.items():
        storage.write_bytes(storage.join(out, name), blob)
    histogram = torch.bincount(labels[labels >= 0], minlength=plan.num_classes).tolist() if plan.labeled else []
    record = {
        "index": index,
        "count": count,
        "seed": seeds.stream_seed(plan.seed, index),
        "files": {name: {"sha256": storage.sha256(blob), "bytes": len(blob)} for name, blob in files.items()},
        "label_histogram": histogram,
        "digits": int((labels >= 0).sum()) if plan.labeled else count,
        "drawn": drawn,  # digits generated to keep those (more with min_confidence)
        "precision": plan.precision,  # the bytes depend on it (see job/sampling/sample.py)
    }
    storage.write_bytes(record_uri(out, index), json.dumps(record, indent=1).encode())
    return record


def write_manifest_if_complete(out: str, plan: Plan, cfg: config.SampleJob) -> dict | None:
    """Write manifest.json when every shard has a record; return it (or None if not yet)."""
    names = set(storage.list_names(storage.join(out, RECORDS)))
    wanted = [f"shard-{i:06d}.json" for i in range(plan.num_shards)]
    if not all(n in names for n in wanted):
        return None
    records = [json.loads(storage.read_bytes(storage.join(out, RECORDS, n))) for n in wanted]
    check_one_precision(out, records, plan.precision)
    histogram = [sum(r["label_histogram"][c] for r in records) for c in range(plan.num_classes)]
    manifest = {
        "format": "digit-job/samples",
        "version": 1,
        "shard_format": plan.format,
        "count": sum(r["count"] for r in records),
        "num_shards": plan.num_shards,
        "shard_size": plan.shard_size,
        "labeled": plan.labeled,
        "labels": plan.labels if plan.labeled else "none (unconditional generator: label -1)",
        "label_histogram": histogram,
        **({"balance": plan.balance} if plan.balance else {}),
        "base_seed": plan.seed,
        "precision": plan.precision,
        "min_confidence": plan.min_confidence,
        "classifier": {"uri": cfg.classifier, "sha256": plan.classifier_sha256} if plan.classifier_sha256 else None,
        "acceptance_rate": (sum(r.get("digits", r["count"]) for r in records)
                            / max(1, sum(r.get("drawn", r["count"]) for r in records))),
        "image_shape": plan.image_shape,
        "layout": plan.layout,
        **layouts.named(plan.layout).manifest_section(plan, cfg, records),
        "generator": {"uri": cfg.generator, "sha256": plan.generator_sha256, **plan.generator_info},
        "config": config.to_dict(cfg),
        "shards": records,
    }
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def recorded_plan(out: str) -> dict | None:
    uri = storage.join(out, RECORDS, PLAN)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def check_one_precision(out: str, records: list[dict], planned: str) -> None:
    """Refuse a set whose shards were generated in different precisions: workers that started
    before the plan existed, with precision=auto, on nodes with and without bf16 units."""
    other = [r["index"] for r in records if r.get("precision", planned) != planned]
    if other:
        shown = ", ".join(str(i) for i in other[:10]) + (" ..." if len(other) > 10 else "")
        raise BadInput(f"{out}: shards {shown} were generated in another precision than the plan's "
                       f"({display_name(planned)}); delete their records under "
                       f"{storage.join(out, RECORDS)} and rerun, or pass precision= explicitly to every worker")


def check_plan(out: str, plan: Plan, saved: dict | None) -> bool:
    """Refuse to mix shards of different jobs under one prefix. Returns whether `out`
    already records this plan. `saved`: the plan found in `out`, if any."""
    if saved is None:
        return False
    mine = asdict(plan)
    # Fields added in later versions compare with their default when a plan lacks them.
    defaults = {f.name: f.default for f in fields(Plan) if f.default is not MISSING}
    # A plan written before the device was recorded is taken as made here.
    diff = [k for k in mine if saved.get(k, defaults.get(k) if k != "device" else mine[k]) != mine[k]]
    if diff:
        raise BadInput(
            f"{out} already holds shards of a different sampling job ({', '.join(diff)} differ): "
            "use a new out= or the same settings"
        )
    return True

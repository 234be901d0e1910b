"""`job sample`: bulk-generate labeled digits from a generator file into shards.

    accelerate launch -m job sample generator=runs/quickstart/generator.safetensors \
        count=1000000 out=s3://bucket/synthetic/run1 [format=safetensors|webdataset|idx] \
        [shard_size=10000] [labels=balanced|uniform|3,5,8|classifier] [seed=0]
    python -m job sample --config <file.yaml> count=60000 out=/data/digits
    python -m job sample generator=... count=10000 out=/data/numbers layout=strings [text=2026 | texts=<file>]

layout=strings makes images of digit strings (numbers) instead: job/strings.py composes
them, one generated digit per character, with their texts and per-digit boxes.

Data flow: config -> generator file (self-describing) -> plan (ceil(count / shard_size)
shards; shard i's noise and labels come from a CPU stream seeded by (seed, i)) -> this
worker's shards (i % workers == worker, worker = pod index * processes + rank) minus those
already done -> generate on the device -> bounded queue -> writer threads encode, upload,
and write the shard's record last -> manifest.json once every shard has a record.

A shard is done when its record `_records/shard-000123.json` exists and its files have
the sizes the record lists. A rerun (a restarted pod, a preempted job) skips done shards
and completes the set without duplicates or gaps.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import threading
import time
from dataclasses import MISSING, asdict, dataclass, fields

import torch

from job import checkpoint, config, console, data, logs, runtime, scoring, shards, storage
from job.errors import BadInput
from job.models import load_generator
from job.precision import Precision, display_name
from job.precision import choose as precision_choice
from job.preemption import Preempted, StopSignals
from job.shard_sets import MANIFEST

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

    def string_layout(self):
        from job import strings

        return strings.Layout.from_config(config.StringsConfig(**self.strings))

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


# ----------------------------------------------------------------------------- shard content


def shard_stream(plan: Plan, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(runtime.stream_seed(plan.seed, index))


def draw_labels(n: int, num_classes: int, labels: str, gen: torch.Generator) -> torch.Tensor:
    """n labels by the `labels=` rule (NO_LABEL when num_classes is 0), drawn from `gen`."""
    if not num_classes:
        return torch.full((n,), shards.NO_LABEL, dtype=torch.int64)
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
        pixels = data.to_pixels(x)
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
        gen = torch.Generator().manual_seed(runtime.stream_seed(plan.seed, -1))
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
    MIN_SHARE = 0.005  # a class this rare would take ~20 rounds per shard
    MIN_ROUND = 256

    def __init__(self, classifier, min_confidence: float, batch: int, device: torch.device):
        self.classifier, self.min_confidence, self.batch, self.device = classifier, min_confidence, batch, device

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class of each image, or NO_LABEL below min_confidence."""
        confidence, predicted = scoring.score(self.classifier, images, self.batch, self.device).probs.max(dim=1)
        return torch.where(confidence >= self.min_confidence, predicted, shards.NO_LABEL)

    def preflight(self, G, plan: Plan) -> list[float]:
        """Each class's share of a few digits from a separate stream; refuses (before anything
        is written) a generator that almost never draws some class."""
        gen = torch.Generator().manual_seed(runtime.stream_seed(plan.seed, -1))
        z = torch.randn(self.PREFLIGHT, G.latent_dim, generator=gen)
        judged = self.labels(generate(G, z, torch.zeros(len(z), dtype=torch.int64), self.batch, self.device,
                                      plan.precision))
        shares = (torch.bincount(judged[judged >= 0], minlength=plan.num_classes).float() / len(judged)).tolist()
        rarest = min(range(plan.num_classes), key=lambda c: shares[c])
        if shares[rarest] < self.MIN_SHARE:
            raise BadInput(
                f"labels=classifier: only {100 * shares[rarest]:.2f}% of this generator's digits are class {rarest}"
                + (f" with confidence >= {self.min_confidence}" if self.min_confidence else "")
                + f" (at least {100 * self.MIN_SHARE:.1f}% needed to fill balanced quotas): train the generator "
                "longer" + (" or lower min_confidence" if self.min_confidence else "")
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
def digits_for(G, plan: Plan, labels: torch.Tensor, gen: torch.Generator, batch: int, device: torch.device,
               keep: ConfidenceFilter | None, index: int) -> tuple[torch.Tensor, int]:
    """(images, digits drawn) for `labels`, noise from `gen`. With a filter, the digits it
    rejects are redrawn round by round from the same stream (same labels, new noise), so the
    result depends only on the plan, never on timing or on the number of workers."""
    z = torch.randn(len(labels), G.latent_dim, generator=gen)
    images = generate(G, z, labels, batch, device, plan.precision)
    drawn = len(labels)
    if keep is None:
        return images, drawn
    pending = torch.nonzero(~keep.accepts(images, labels)).flatten()
    for _ in range(keep.MAX_ROUNDS):
        if len(pending) == 0:
            return images, drawn
        z = torch.randn(len(pending), G.latent_dim, generator=gen)
        candidates = generate(G, z, labels[pending], batch, device, plan.precision)
        drawn += len(pending)
        ok = keep.accepts(candidates, labels[pending])
        images[pending[ok]] = candidates[ok]
        pending = pending[~ok]
    if len(pending):
        raise BadInput(f"shard {index}: {len(pending)} digits still below min_confidence={keep.min_confidence} "
                       f"after {keep.MAX_ROUNDS} redraws: lower it (finished shards are kept)")
    return images, drawn


def shard_digits(G, plan: Plan, index: int, batch: int, device: torch.device,
                 keep: ConfidenceFilter | ClassifierLabels | None = None):
    """((images, labels), digits drawn) of shard `index`: labels first, then the noise.
    labels=classifier: the labels are the quota `keep` (a ClassifierLabels) fills."""
    gen = shard_stream(plan, index)
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
    from job import strings

    gen = shard_stream(plan, index)
    layout = plan.string_layout()
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


# ----------------------------------------------------------------------------- records


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
    if plan.layout == "strings":
        files = shards.encode_strings(plan.format, index, content)
        labels = content.labels.flatten()
        count = len(content.texts)
    else:
        images, labels = content
        files = shards.encode(plan.format, index, images, labels, plan.labeled)
        count = int(labels.shape[0])
    for name, blob in files.items():
        storage.write_bytes(storage.join(out, name), blob)
    histogram = torch.bincount(labels[labels >= 0], minlength=plan.num_classes).tolist() if plan.labeled else []
    record = {
        "index": index,
        "count": count,
        "seed": runtime.stream_seed(plan.seed, index),
        "files": {name: {"sha256": checkpoint.sha256(blob), "bytes": len(blob)} for name, blob in files.items()},
        "label_histogram": histogram,
        "digits": int((labels >= 0).sum()) if plan.labeled else count,
        "drawn": drawn,  # digits generated to keep those (more with min_confidence)
        "precision": plan.precision,  # the bytes depend on it (see _precision_for)
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
    _check_one_precision(out, records, plan.precision)
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
        "base_seed": plan.seed,
        "precision": plan.precision,
        "min_confidence": plan.min_confidence,
        "classifier": {"uri": cfg.classifier, "sha256": plan.classifier_sha256} if plan.classifier_sha256 else None,
        "acceptance_rate": (sum(r.get("digits", r["count"]) for r in records)
                            / max(1, sum(r.get("drawn", r["count"]) for r in records))),
        "image_shape": plan.image_shape,
        "layout": plan.layout,
        **({"strings": {"text": plan.text, "texts": cfg.texts or None, "texts_sha256": plan.texts_sha256 or None,
                        "digits": sum(r["digits"] for r in records), **plan.strings}}
           if plan.layout == "strings" else {}),
        "generator": {"uri": cfg.generator, "sha256": plan.generator_sha256, **plan.generator_info},
        "config": config.to_dict(cfg),
        "shards": records,
    }
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


# ----------------------------------------------------------------------------- the job


def _judge_classifier(cfg: config.SampleJob, G) -> tuple[torch.nn.Module, str]:
    """The judge of min_confidence or labels=classifier and its file's sha256; refuses what
    cannot work."""
    if cfg.labels == "classifier" and G.num_classes:
        raise BadInput(f"labels=classifier is for unconditional generators: {cfg.generator} is conditional and "
                       "draws the classes it is asked for (use labels=balanced)")
    if not G.num_classes and cfg.labels != "classifier":
        raise BadInput("min_confidence needs a conditional generator or labels=classifier (an unconditional "
                       "one has no requested class)")
    classifier, _, raw = scoring.load_classifier(cfg.classifier)
    if classifier.channels != G.output_shape[0] or (G.num_classes and classifier.num_classes != G.num_classes):
        raise BadInput(f"classifier={cfg.classifier} ({classifier.num_classes} classes, "
                       f"{classifier.channels} channel(s)) "
                       f"does not fit this generator ({G.num_classes} classes, {G.output_shape[0]} channel(s))")
    return classifier, checkpoint.sha256(raw)


def _pods(cfg: config.SampleJob) -> tuple[int, int]:
    """(this pod's index, number of pods): config `workers`, else $DIGITS_NUM_WORKERS, else 1;
    the index is the Indexed Job's $JOB_COMPLETION_INDEX (0 outside Kubernetes)."""
    try:
        pods = cfg.workers or int(os.environ.get("DIGITS_NUM_WORKERS", "1"))
        pod = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    except ValueError:
        raise BadInput("DIGITS_NUM_WORKERS and JOB_COMPLETION_INDEX must be whole numbers") from None
    if not 0 <= pod < pods:
        raise BadInput(f"JOB_COMPLETION_INDEX={pod} is outside 0..{pods - 1}: set workers= to the Job's completions")
    return pod, pods


def _strings_input(cfg: config.SampleJob, G) -> tuple[list[str] | None, str]:
    """layout=strings: check the generator can draw digits; read the texts file if any."""
    if cfg.layout != "strings":
        return None, ""
    if G.num_classes != 10 or G.output_shape[0] not in (1, 3):
        raise BadInput(f"layout=strings needs a class-conditional generator of the ten digits; {cfg.generator} "
                       f"has {G.num_classes or 'no'} classes")
    if not cfg.texts:
        return None, ""
    data = storage.read_bytes(cfg.texts)
    from job import strings

    return strings.parse_texts_file(data, cfg.texts), checkpoint.sha256(data)


def _recorded_plan(out: str) -> dict | None:
    uri = storage.join(out, RECORDS, PLAN)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


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


def _precision_for(cfg: config.SampleJob, inputs: _Inputs, acc, recorded: dict | None) -> Precision:
    """The precision shards are generated in. auto follows a plan already in `out` (written
    by another worker or an earlier run, perhaps on other hardware), so every shard of a set
    is made in one precision and a rerun stays byte-identical; else this machine decides."""
    if cfg.precision == "auto" and recorded is not None and recorded.get("precision") in ("no", "tf32", "bf16"):
        mode = recorded["precision"]
        return Precision(mode, acc.device.type, f"auto: the plan already in {cfg.out} is {display_name(mode)}")
    return generation_precision(cfg.precision, inputs.generator, inputs.info, cfg.batch_size, acc)


def _check_one_precision(out: str, records: list[dict], planned: str) -> None:
    """Refuse a set whose shards were generated in different precisions: workers that started
    before the plan existed, with precision=auto, on nodes with and without bf16 units."""
    other = [r["index"] for r in records if r.get("precision", planned) != planned]
    if other:
        shown = ", ".join(str(i) for i in other[:10]) + (" ..." if len(other) > 10 else "")
        raise BadInput(f"{out}: shards {shown} were generated in another precision than the plan's "
                       f"({display_name(planned)}); delete their records under "
                       f"{storage.join(out, RECORDS)} and rerun, or pass precision= explicitly to every worker")


def _check_plan(out: str, plan: Plan, saved: dict | None) -> bool:
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


class _Writers:
    """Writer threads fed by a bounded queue; the first error is re-raised in the caller."""

    def __init__(self, n: int, size: int, work):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.error: BaseException | None = None
        self.work = work
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    self.work(*item)
            except BaseException as e:  # noqa: BLE001 (handed to the main thread)
                self.error = e
            finally:
                self.queue.task_done()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


@dataclass
class _Inputs:
    """What `sample` reads and checks before it writes anything."""

    generator: torch.nn.Module
    info: dict
    sha256: str
    texts: list[str] | None  # layout=strings with texts=<file>
    texts_sha256: str
    classifier: torch.nn.Module | None  # the judge of min_confidence
    classifier_sha256: str


def _read_inputs(cfg: config.SampleJob) -> _Inputs:
    """Phase 1: load the generator (and classifier, texts) and check every setting against
    them and the destination. Everything that can reject the input happens here."""
    G, info, raw = load_generator(cfg.generator)
    storage.check_writable(cfg.out)
    if cfg.label_choices() is not None and (not G.num_classes or max(cfg.label_choices()) >= G.num_classes):
        raise BadInput(f"labels={cfg.labels} asks for classes this generator does not have "
                       f"(it has {G.num_classes or 'no'} classes)")
    texts, texts_sha256 = _strings_input(cfg, G)
    classifier, classifier_sha256 = None, ""
    if cfg.min_confidence > 0 or cfg.labels == "classifier":
        classifier, classifier_sha256 = _judge_classifier(cfg, G)
    return _Inputs(G, info, checkpoint.sha256(raw), texts, texts_sha256, classifier, classifier_sha256)


def _wait_for_plan(cfg: config.SampleJob, pod: int) -> dict | None:
    """precision=auto is decided once per set: by pod 0, which measures and writes the plan.
    The other pods of an Indexed Job wait for that plan (up to $DIGITS_PLAN_WAIT_S, 600 s)
    rather than measure on their own: measurements on the same hardware can fall either side
    of the margin, and shards of two precisions cannot make one set. Pods that find a plan,
    and runs with an explicit precision, do not wait."""
    recorded = _recorded_plan(cfg.out)
    if recorded is not None or cfg.precision != "auto" or pod == 0:
        return recorded
    wait_s = float(os.environ.get("DIGITS_PLAN_WAIT_S", "600"))
    deadline = time.monotonic() + wait_s
    if wait_s > 0:
        console.say(f"worker pod {pod}: waiting up to {wait_s:.0f} s for pod 0's plan (precision=auto is measured "
                    f"once per set, by pod 0)")
    while recorded is None and time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        recorded = _recorded_plan(cfg.out)
    if recorded is None and wait_s > 0:
        console.warn(f"no plan from pod 0 after {wait_s:.0f} s: measuring here; if pod 0 picks another precision, "
                     "the set is refused before its manifest (pass precision= to every pod to avoid that)")
    return recorded


def _make_plan(cfg: config.SampleJob, inputs: _Inputs, acc, pod: int) -> tuple[Plan, Precision, bool]:
    """Phase 2: the plan of the whole shard set (its precision follows a plan already in
    `out`, or pod 0's), checked against a recorded one. Returns (plan, precision, whether it
    is recorded)."""
    recorded = _wait_for_plan(cfg, pod)
    precision = _precision_for(cfg, inputs, acc, recorded)
    precision.apply()
    G = inputs.generator
    plan = Plan(
        generator_sha256=inputs.sha256, generator_info=inputs.info, count=cfg.count, shard_size=cfg.shard_size,
        format=cfg.format, labels=cfg.labels, seed=cfg.seed, precision=precision.mode,
        num_classes=inputs.classifier.num_classes if cfg.labels == "classifier" else G.num_classes,
        image_shape=list(G.output_shape),
        min_confidence=cfg.min_confidence, classifier_sha256=inputs.classifier_sha256,
        layout=cfg.layout, strings=asdict(cfg.strings) if cfg.layout == "strings" else None,
        text=cfg.text, texts_sha256=inputs.texts_sha256, device=acc.device.type,
    )
    return plan, precision, _check_plan(cfg.out, plan, recorded)


def _generate(cfg: config.SampleJob, plan: Plan, inputs: _Inputs, G: torch.nn.Module, keep: ConfidenceFilter | None,
              todo: list[int], worker: int, acc) -> None:
    """Phase 3: generate this worker's remaining shards; writer threads encode and store them
    (records last). SIGTERM/SIGINT: stop generating, let the writers finish the shards
    already made, then raise Preempted (exit 143/130). A rerun skips every finished shard."""
    unit = "strings" if plan.layout == "strings" else "digits"
    bar = logs.progress(acc.is_main_process and cfg.progress, sum(plan.shard_count(i) for i in todo), "sample",
                        unit.rstrip("s"), unit_scale=True)
    writers = _Writers(cfg.writers, cfg.queue, lambda i, content, drawn: (
        write_shard(cfg.out, plan, i, content, drawn), bar.update(plan.shard_count(i))))
    started = time.perf_counter()
    generated = 0
    with StopSignals() as signals:
        try:
            for index in todo:
                if plan.layout == "strings":
                    made = shard_strings(G, plan, index, cfg.batch_size, acc.device, keep, inputs.texts)
                else:
                    made = shard_digits(G, plan, index, cfg.batch_size, acc.device, keep)
                writers.put((index, *made))
                generated += 1
                if signals.signum:
                    break
        finally:
            writers.close()
            bar.close()
    if signals.signum and generated < len(todo):
        name = signal.Signals(signals.signum).name
        raise Preempted(f"{name}: worker {worker} wrote {generated} of its {len(todo)} remaining shards; the rest "
                        f"are not started; run the same command to finish {cfg.out}", signals.signum)
    elapsed = time.perf_counter() - started
    made = sum(plan.shard_count(i) for i in todo)
    console.say(f"worker {worker}: wrote {console.count(len(todo), 'shard')} ({made} {unit}) in {elapsed:.1f}s"
                + (f", {made / elapsed:.0f} {unit}/s" if made else ""))


def main(cfg: config.SampleJob) -> int:
    inputs = _read_inputs(cfg)
    # The Accelerator places this process; the sampling precision is the plan's, not its own.
    acc, _ = runtime.make_accelerator("no", deterministic=True)
    pod, pods = _pods(cfg)
    plan, precision, plan_recorded = _make_plan(cfg, inputs, acc, pod)

    G = inputs.generator.to(acc.device)
    keep = None
    if plan.labels == "classifier":
        keep = ClassifierLabels(inputs.classifier.to(acc.device), cfg.min_confidence, cfg.batch_size, acc.device)
        shares = keep.preflight(G, plan)
        console.say0(acc, "labels=classifier: this generator's digits are " + ", ".join(
            f"{c}: {100 * share:.1f}%" for c, share in enumerate(shares)) + "; quotas keep every shard balanced")
    elif inputs.classifier is not None:
        keep = ConfidenceFilter(inputs.classifier.to(acc.device), cfg.min_confidence, cfg.batch_size, acc.device)
        rates = keep.preflight(G, plan)
        console.say0(acc, f"min_confidence={cfg.min_confidence} keeps about "
                            f"{100 * sum(rates) / len(rates):.1f}% of drawn digits "
                            f"(worst class {100 * min(rates):.1f}%)")
    # Worker ids: Indexed Job pods x accelerate processes, no rendezvous between pods.
    worker, workers = pod * acc.num_processes + acc.process_index, pods * acc.num_processes
    console.say0(acc, f"{runtime.describe(acc, precision)}")
    unit = "strings" if plan.layout == "strings" else "digits"
    console.say0(acc, f"{plan.count} {unit} in {console.count(plan.num_shards, f'{plan.format} shard')} "
                        f"to {cfg.out} ({console.count(workers, 'worker')})")
    # Every pod that finds no plan writes it (same bytes from the same settings), so a pod on
    # other hardware that starts later follows its precision instead of auto's own pick.
    if acc.is_main_process and not plan_recorded:
        storage.write_bytes(storage.join(cfg.out, RECORDS, PLAN), json.dumps(asdict(plan), indent=1).encode())

    mine = [i for i in range(plan.num_shards) if i % workers == worker]
    todo = [i for i in mine if not shard_done(cfg.out, i)]
    if len(todo) < len(mine):
        console.say(f"worker {worker}: {len(mine) - len(todo)} of {console.count(len(mine), 'shard')} already done")
    _generate(cfg, plan, inputs, G, keep, todo, worker, acc)

    # Phase 4: whichever worker finds every shard recorded writes the manifest.
    acc.wait_for_everyone()
    if acc.is_main_process:
        manifest = write_manifest_if_complete(cfg.out, plan, cfg)
        if manifest is None:
            console.say(f"other workers still have shards to write; the last one writes "
                        f"{storage.join(cfg.out, MANIFEST)}")
        else:
            console.say(f"complete: {manifest['count']} {unit}, manifest {storage.join(cfg.out, MANIFEST)}")
    return 0

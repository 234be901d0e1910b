"""`job sample`: bulk-generate labeled digits from a generator file into shards.

    accelerate launch -m job sample generator=runs/quickstart/generator.safetensors \
        count=1000000 out=s3://bucket/synthetic/run1 [format=safetensors|webdataset|idx] \
        [shard_size=10000] [labels=balanced|uniform|3,5,8|classifier] [seed=0]
    python -m job sample --config <file.yaml> count=60000 out=/data/digits
    python -m job sample generator=... count=10000 out=/data/numbers layout=strings [text=2026 | texts=<file>]

layout=strings makes images of digit strings (numbers) instead: job/data/strings.py composes
them, one generated digit per character, with their texts and per-digit boxes.

Data flow: config -> generator file (self-describing) -> plan (ceil(count / shard_size)
shards; shard i's noise and labels come from a CPU stream seeded by (seed, i)) -> this
worker's shards (i % workers == worker, worker = pod index * processes + rank) minus those
already done -> generate on the device (job/sampling/generation.py) -> bounded queue ->
writer threads encode, upload, and write the shard's record last -> manifest.json once
every shard has a record (plan, records and manifest: job/shardsets/records.py).

A shard is done when its record `_records/shard-000123.json` exists and its files have
the sizes the record lists. A rerun (a restarted pod, a preempted job) skips done shards
and completes the set without duplicates or gaps.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass

import torch

from job import storage
from job.core import config, console, runtime
from job.core.errors import BadInput
from job.core.precision import Precision, display_name
from job.core.preemption import Preempted, StopSignals
from job.core.progress import progress_bar
from job.data import strings
from job.models import load_generator, scoring
from job.sampling import balance
from job.sampling.generation import ClassifierLabels, ConfidenceFilter, generation_precision
from job.shardsets import layouts
from job.shardsets.records import (
    PLAN,
    RECORDS,
    Plan,
    check_plan,
    recorded_plan,
    shard_done,
    write_manifest_if_complete,
    write_shard,
)
from job.shardsets.sets import MANIFEST


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
    return classifier, storage.sha256(raw)


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


def _texts(cfg: config.SampleJob) -> tuple[list[str] | None, str]:
    """The texts= file's strings and its sha256 (layout=strings; the config refuses texts=
    for other layouts)."""
    if not cfg.texts:
        return None, ""
    data = storage.read_bytes(cfg.texts)
    return strings.parse_texts_file(data, cfg.texts), storage.sha256(data)


def _precision_for(cfg: config.SampleJob, inputs: _Inputs, acc, recorded: dict | None) -> Precision:
    """The precision shards are generated in. auto follows a plan already in `out` (written
    by another worker or an earlier run, perhaps on other hardware), so every shard of a set
    is made in one precision and a rerun stays byte-identical; else this machine decides."""
    if cfg.precision == "auto" and recorded is not None and recorded.get("precision") in ("no", "tf32", "bf16"):
        mode = recorded["precision"]
        return Precision(mode, acc.device.type, f"auto: the plan already in {cfg.out} is {display_name(mode)}")
    return generation_precision(cfg.precision, inputs.generator, inputs.info, cfg.batch_size, acc)


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
    balance: dict | None = None  # balance=: what the real set has and what is drawn (job/sampling/balance.py)

    @property
    def count(self) -> int:
        return sum(self.balance["per_class"]) if self.balance else 0


def _read_inputs(cfg: config.SampleJob) -> _Inputs:
    """Phase 1: load the generator (and classifier, texts) and check every setting against
    them and the destination. Everything that can reject the input happens here."""
    G, info, raw = load_generator(cfg.generator)
    storage.check_writable(cfg.out)
    if cfg.label_choices() is not None and (not G.num_classes or max(cfg.label_choices()) >= G.num_classes):
        raise BadInput(f"labels={cfg.labels} asks for classes this generator does not have "
                       f"(it has {G.num_classes or 'no'} classes)")
    layouts.named(cfg.layout).function("check_generator")(G, cfg.generator)
    texts, texts_sha256 = _texts(cfg)
    classifier, classifier_sha256 = None, ""
    if cfg.min_confidence > 0 or cfg.labels == "classifier":
        classifier, classifier_sha256 = _judge_classifier(cfg, G)
    plan_balance = None
    if cfg.balance:
        if not G.num_classes:
            raise BadInput(f"balance= draws digits of chosen classes: {cfg.generator} is unconditional; "
                           "use a class-conditional generator (model.conditional=true)")
        have, where = balance.real_counts(cfg)
        need = balance.top_up(have, cfg.balance_to, G.num_classes, where)
        plan_balance = {"source": cfg.balance if cfg.balance != "data" else where, "have": have,
                        "target": cfg.balance_to or max(have), "per_class": need}
    return _Inputs(G, info, storage.sha256(raw), texts, texts_sha256, classifier, classifier_sha256, plan_balance)


def _wait_for_plan(cfg: config.SampleJob, pod: int) -> dict | None:
    """precision=auto is decided once per set: by pod 0, which measures and writes the plan.
    The other pods of an Indexed Job wait for that plan (up to $DIGITS_PLAN_WAIT_S, 600 s)
    rather than measure on their own: measurements on the same hardware can fall either side
    of the margin, and shards of two precisions cannot make one set. Pods that find a plan,
    and runs with an explicit precision, do not wait."""
    recorded = recorded_plan(cfg.out)
    if recorded is not None or cfg.precision != "auto" or pod == 0:
        return recorded
    wait_s = float(os.environ.get("DIGITS_PLAN_WAIT_S", "600"))
    deadline = time.monotonic() + wait_s
    if wait_s > 0:
        console.say(f"worker pod {pod}: waiting up to {wait_s:.0f} s for pod 0's plan (precision=auto is measured "
                    f"once per set, by pod 0)")
    while recorded is None and time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        recorded = recorded_plan(cfg.out)
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
        generator_sha256=inputs.sha256, generator_info=inputs.info, count=cfg.count or inputs.count,
        shard_size=cfg.shard_size,
        format=cfg.format, labels=cfg.labels, seed=cfg.seed, precision=precision.mode,
        num_classes=inputs.classifier.num_classes if cfg.labels == "classifier" else G.num_classes,
        image_shape=list(G.output_shape),
        min_confidence=cfg.min_confidence, classifier_sha256=inputs.classifier_sha256,
        layout=cfg.layout, strings=layouts.named(cfg.layout).settings(cfg),
        text=cfg.text, texts_sha256=inputs.texts_sha256, device=acc.device.type, balance=inputs.balance,
    )
    return plan, precision, check_plan(cfg.out, plan, recorded)


def _generate(cfg: config.SampleJob, plan: Plan, inputs: _Inputs, G: torch.nn.Module, keep: ConfidenceFilter | None,
              todo: list[int], worker: int, acc) -> None:
    """Phase 3: generate this worker's remaining shards; writer threads encode and store them
    (records last). SIGTERM/SIGINT: stop generating, let the writers finish the shards
    already made, then raise Preempted (exit 143/130). A rerun skips every finished shard."""
    layout = layouts.named(plan.layout)
    draw = layout.function("draw")
    bar = progress_bar(acc.is_main_process and cfg.progress, sum(plan.shard_count(i) for i in todo), "sample",
                       layout.unit, unit_scale=True)
    writers = _Writers(cfg.writers, cfg.queue, lambda i, content, drawn: (
        write_shard(cfg.out, plan, i, content, drawn), bar.update(plan.shard_count(i))))
    started = time.perf_counter()
    generated = 0
    with StopSignals() as signals:
        try:
            for index in todo:
                made = draw(G, plan, index, cfg.batch_size, acc.device, keep, inputs.texts)
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
    console.say(f"worker {worker}: wrote {console.count(len(todo), 'shard')} ({console.count(made, layout.unit)}) "
                f"in {elapsed:.1f}s" + (f", {made / elapsed:.0f} {layout.unit}s/s" if made else ""))


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
    if plan.balance:
        b = plan.balance
        console.say0(acc, f"balance: {b['source']} has {', '.join(map(str, b['have']))} digits of classes "
                          f"0-{len(b['have']) - 1}; drawing {', '.join(map(str, b['per_class']))} to bring each "
                          f"to {b['target']:,}")
    unit = layouts.named(plan.layout).unit
    console.say0(acc, f"{console.count(plan.count, unit)} in {console.count(plan.num_shards, f'{plan.format} shard')} "
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
            console.say(f"complete: {console.count(manifest['count'], unit)}, "
                        f"manifest {storage.join(cfg.out, MANIFEST)}")
    return 0

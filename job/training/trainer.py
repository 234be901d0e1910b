"""What every model kind's training shares: the Trainer base class.

`job.training.train` picks the kind's Trainer (train_gan, train_autoencoder, train_mean,
train_classifier: what differs) and runs it; this module is the loop they all run.

Data flow: config -> runtime (Accelerator, precision) -> data (whole split on the device)
-> the kind's Trainer builds its networks -> weights from the checkpoint when resuming
-> accelerator.prepare (DDP) -> loop of train_step -> every N steps: a metrics line, a
grid PNG, a checkpoint (global main process writes, meta.json last) -> at the end: the
exported model file and a cross-rank parameter check (world.json).
"""

from __future__ import annotations

import hashlib
import json
import signal
import time

import torch
from torch import nn

from job import storage
from job.core import config, console, precision, runtime, seeds
from job.core.errors import BadInput
from job.core.kinds import KINDS
from job.core.preemption import Preempted, StopSignals
from job.core.progress import progress_bar
from job.data import loading
from job.data.augment import random_affine
from job.training import checkpoint
from job.training.metrics import MetricsLog
from job.training.steps import adam

# review_precision: the first steps warm up (allocations, kernel choice) and are not timed, and
# a run of fewer steady steps than this says nothing about the measurement.
WARMUP_STEPS, REVIEW_MIN_STEPS = 3, 20


def resolve_resume(cfg: config.TrainJob) -> str | None:
    """The checkpoint folder to start from, or None for a fresh run. Reads, never writes."""
    if cfg.resume == "never":
        if checkpoint.complete_steps(cfg.run.dir):
            raise BadInput(
                f"resume=never but {cfg.run.dir} already has checkpoints: use resume=auto or a new run.dir"
            )
        return None
    if cfg.resume == "auto":
        return checkpoint.latest(cfg.run.dir)
    if not storage.exists(storage.join(cfg.resume, "meta.json")):
        raise BadInput(f"resume={cfg.resume} is not a complete checkpoint folder (no meta.json)")
    return cfg.resume


def _params_digest(modules: list[nn.Module]) -> torch.Tensor:
    """sha256 of all parameters of `modules`, as a uint8 tensor (to gather across ranks)."""
    h = hashlib.sha256()
    for m in modules:
        for name, p in m.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


class Trainer:
    """The loop, checkpoints and logs of one training run. A subclass (one per model kind)
    fills in the networks and the step:

    - `build()`: create the networks in `self.modules` (name -> module; every one is saved)
      and say which of them are trained (`self.trained`, digested across ranks at the end);
    - `prepare()`: wrap them with `self.acc.prepare`, create `self.optimizers` and
      `self.scalers` (name -> object, same names as the checkpoint files);
    - `train_step(step)`: one update, returning a dict of 0-d tensors to log;
    - `export(step)`: write the run's model file; and optionally `after_step`, `write_grid`
      and `evaluate` (extra metrics at checkpoints, main process).
    """

    uses_batches: bool = True  # False for kinds that read the whole split at once (mean)

    def __init__(self, cfg: config.TrainJob):
        self.cfg = cfg
        self.model_file = KINDS[cfg.model.kind].model_file  # the exported file in run.dir
        # Everything that can reject the input happens before anything is written.
        storage.check_writable(cfg.run.dir)
        resume_from = resolve_resume(cfg)

        self.acc, self.precision = runtime.make_accelerator(cfg.train.precision)
        acc = self.acc
        self.device = acc.device

        split = loading.load_split(cfg.data, train=True, device=self.device)
        self.images, self.labels, self.dataset_classes = split.images, split.labels, split.num_classes
        if cfg.data.profile != "none":
            per_class = torch.bincount(split.labels.cpu(), minlength=split.num_classes).tolist()
            console.say0(acc, f"data.profile={cfg.data.profile} (seed {cfg.data.profile_seed}): "
                              f"{', '.join(map(str, per_class))} digits of classes 0-{split.num_classes - 1} "
                              f"({len(split.labels):,} in all)")
        self.channels = split.images.shape[1]

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.modules: dict[str, nn.Module] = {}
        self.trained: list[str] = []
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.build()
        self.precision = self._measured_precision()
        console.say0(acc, f"{cfg.model.kind} on {runtime.describe(acc, self.precision)}")
        console.say0(acc, f"writing to {cfg.run.dir}")

        self.start_step = 0
        loaded = None
        if resume_from is not None:
            loaded = checkpoint.load(resume_from)
            try:
                for name, module in self.modules.items():
                    module.load_state_dict(loaded.modules[name])
            except (KeyError, RuntimeError) as e:
                raise BadInput(
                    f"checkpoint {resume_from} does not fit this config ({str(e).splitlines()[0]}); "
                    "use the config it was trained with or a new run.dir"
                ) from None
            self.start_step = loaded.step
            console.say0(acc, f"resuming from {resume_from} (step {loaded.step})")

        self.prepare()
        if loaded is not None:
            self._restore_training_state(loaded)
        if self.uses_batches:
            self.batches = loading.EpochBatches(
                len(self.images), cfg.train.batch_size, acc.process_index, acc.num_processes, cfg.seed, self.device
            )
        self.noise = torch.Generator(device=self.device)

    def _measured_precision(self):
        """precision=auto on a CPU: the kind's probe measured on the main process (or its
        cached result), the choice broadcast so that every rank computes alike."""
        probe = self.precision_probe()
        if probe is None:
            return precision.resolve(self.cfg.train.precision, self.device,
                                     f"fp32: the {self.cfg.model.kind} kind runs no network step to measure")
        m, t = self.cfg.model, self.cfg.train
        key = {"command": "train", "kind": m.kind, "model": config.to_dict(self.cfg)["model"],
               "batch_size": t.batch_size, "channels_last": t.channels_last, "image_size": self.images.shape[-1]}

        return precision.choose(self.cfg.train.precision, self.device, probe, t.batch_size, key,
                                measure_here=self.acc.is_main_process,
                                share=lambda result: runtime.from_main(self.acc, result))

    def review_precision(self, step_seconds: list[float]) -> None:
        """Main process, after the loop: auto's measurement checked against this run's own
        steady step time (the median after WARMUP_STEPS); a contradiction drops the cached
        choice and says so (job/core/precision.py, `review`)."""
        steady = sorted(step_seconds[WARMUP_STEPS:])
        if len(steady) < REVIEW_MIN_STEPS:
            return
        line = precision.review(self.precision, self.cfg.train.batch_size / steady[len(steady) // 2])
        if line:
            console.say(line)

    def precision_probe(self):
        """One training step of copies of this kind's networks on a batch of real images, as
        a callable(precision) for `precision=auto` to time; None: the kind has no probe (fp32
        or bf16 then follow the device's flags)."""
        return None

    def probe_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of real images (model input) and labels for a probe, drawn with its own
        generator: the run's random streams are left untouched."""
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, len(self.images), (self.cfg.train.batch_size,), generator=g).to(self.device)
        real = loading.to_model_input(self.images[idx], self.cfg.data.image_size, self.cfg.train.channels_last)
        return real, self.labels[idx]

    def adamw_probe(self, name: str, step_fn, targets=None):
        """A probe for a one-network kind trained with AdamW by `step_fn` (classifier_step,
        autoencoder_step): a copy of the network, its own optimizer."""
        import copy

        t = self.cfg.train
        fmt = torch.channels_last if t.channels_last else torch.contiguous_format
        net = copy.deepcopy(self.modules[name]).to(device=self.device, memory_format=fmt).train()
        optimizer = adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        images, labels = self.probe_inputs()
        goal = labels if targets is None else targets(net, labels)

        def probe(p) -> None:
            step_fn(net, optimizer, p.scaler(), p, images, goal, t.lr)

        return probe

    # ------------------------------------------------------------------ for subclasses

    def build(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export(self, step: int) -> None:
        raise NotImplementedError

    def after_step(self, done: int) -> None:
        """Called after every step with the number of steps done (EMA updates, ...)."""

    def write_grid(self, done: int) -> str | None:
        """Write a sample grid PNG; return its URI (main process only)."""
        return None

    def evaluate(self, done: int) -> dict[str, float]:
        """Extra metrics for the log at checkpoints and at the end (main process only)."""
        return {}

    def prepare_adamw(self, name: str) -> nn.Module:
        """Prepare the one trained module `name` (device, memory format, DDP) with AdamW at
        train.lr / train.weight_decay and a grad scaler; returns the wrapped module."""
        t = self.cfg.train
        module = self.modules[name]
        module.to(device=self.device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
        wrapped = self.acc.prepare(module)
        self.optimizers = {name: adam(module.parameters(), lr=t.lr, weight_decay=t.weight_decay)}
        self.scalers = {name: self.precision.scaler()}
        return wrapped

    def save_grid(self, done: int, png: bytes) -> str:
        """Store a grid as samples/step-<done>.png and samples/latest.png; returns the first."""
        uri = storage.join(self.cfg.run.dir, "samples", f"step-{done:08d}.png")
        storage.write_bytes(uri, png)
        storage.write_bytes(storage.join(self.cfg.run.dir, "samples", "latest.png"), png)
        return uri

    def reseed_noise(self, step: int) -> torch.Generator:
        """The noise generator of (seed, rank, step): counter-based, so a resumed run draws
        exactly what an uninterrupted one would, with no generator state to carry."""
        self.noise.manual_seed(seeds.stream_seed(self.cfg.seed, self.acc.process_index, step))
        return self.noise

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's real images (model input, [-1, 1]) and labels for `step`."""
        idx = self.batches.indices(step)
        real = loading.to_model_input(self.images[idx], self.cfg.data.image_size, self.cfg.train.channels_last)
        return real, self.labels[idx]

    def jittered(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """`images` with the step's random affine jitter when train.augment is on."""
        t = self.cfg.train
        if not t.augment:
            return images
        images = random_affine(images, self.reseed_noise(step))
        return images.contiguous(memory_format=torch.channels_last) if t.channels_last else images

    # ------------------------------------------------------------------ state

    def _restore_training_state(self, loaded: checkpoint.Checkpoint) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint.optimizer_from_files(*loaded.optimizers[name]))
            checkpoint.match_param_layouts(opt)
        if self.precision.mode == "fp16":
            for name, scaler in self.scalers.items():
                if f"scaler_{name}" in loaded.state:
                    scaler.load_state_dict(loaded.state[f"scaler_{name}"])
        # Global RNG streams per rank (dropout; the training noise itself is counter-based).
        rank = self.acc.process_index
        if f"cpu.rank{rank}" in loaded.rng:
            torch.set_rng_state(loaded.rng[f"cpu.rank{rank}"])
        if self.device.type == "cuda" and f"cuda.rank{rank}" in loaded.rng:
            torch.cuda.set_rng_state(loaded.rng[f"cuda.rank{rank}"], self.device)

    def _gather_rng(self) -> dict[str, torch.Tensor]:
        """Every rank's global RNG state (a collective: all ranks must call it)."""
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        out = {}
        for kind, state in states.items():
            gathered = self.acc.gather(state.to(self.device)[None]).cpu()
            for r in range(gathered.shape[0]):
                out[f"{kind}.rank{r}"] = gathered[r]
        return out

    def save_checkpoint(self, step: int) -> None:
        rng = self._gather_rng()
        if self.acc.is_main_process:
            state = {}
            if self.precision.mode == "fp16":
                state = {f"scaler_{name}": s.state_dict() for name, s in self.scalers.items()}
            ckpt = checkpoint.Checkpoint(
                step=step,
                modules={name: m.state_dict() for name, m in self.modules.items()},
                optimizers={name: checkpoint.optimizer_to_files(o) for name, o in self.optimizers.items()},
                rng=rng,
                state=state,
                config=config.to_dict(self.cfg),
            )
            checkpoint.save(self.cfg.run.dir, ckpt)
            checkpoint.prune(self.cfg.run.dir, self.cfg.train.keep_checkpoints)
            self.export(step)
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ loop

    def run(self) -> dict:
        cfg, acc, t = self.cfg, self.acc, self.cfg.train
        if acc.is_main_process:
            storage.write_bytes(storage.join(cfg.run.dir, "config.yaml"), config.to_yaml(cfg).encode())
        metrics = MetricsLog(cfg.run.dir, self.start_step) if acc.is_main_process else None
        if self.start_step >= t.steps:
            console.say0(acc, f"already at step {self.start_step} of {t.steps}; nothing to do")
            return self._finish(self.start_step, metrics)

        bar = progress_bar(acc.is_main_process and t.progress, t.steps, "train", "step", initial=self.start_step)
        window_start, window_steps = time.perf_counter(), 0
        step_seconds: list[float] = []  # the steps alone (no grid, checkpoint or log), for review_precision
        with StopSignals() as signals:
            for step in range(self.start_step, t.steps):
                step_started = time.perf_counter()
                out = self.train_step(step)
                done = step + 1
                self.after_step(done)
                step_seconds.append(time.perf_counter() - step_started)
                bar.update(1)
                window_steps += 1

                last = done == t.steps
                checkpoint_now = done % t.checkpoint_every == 0 or last
                if done % t.log_every == 0 or last:
                    stats = {k: acc.reduce(v, reduction="mean").item() for k, v in out.items()}
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": done,
                        **{k: round(v, 6) for k, v in stats.items()},
                        "images_per_s": round(window_steps * t.batch_size * acc.num_processes / elapsed, 1),
                    }
                    if acc.is_main_process and checkpoint_now:
                        record.update(self.evaluate(done))
                    if metrics is not None:
                        metrics.log(record)
                        metrics.flush()
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(stats.items())[:2]})
                    window_start, window_steps = time.perf_counter(), 0
                if acc.is_main_process and (done % t.sample_every == 0 or last):
                    self.write_grid(done)
                if checkpoint_now:
                    self.save_checkpoint(done)
                signum = signals.stop_agreed(acc, done)
                if signum and not last:
                    self._stop_early(done, signum, saved=checkpoint_now, bar=bar, metrics=metrics)
        bar.close()
        if acc.is_main_process:
            self.review_precision(step_seconds)
        return self._finish(t.steps, metrics)

    def _stop_early(self, done: int, signum: int, saved: bool, bar, metrics: MetricsLog | None) -> None:
        """Save a checkpoint at `done` (unless one was just saved) and raise Preempted."""
        if not saved:
            self.save_checkpoint(done)
        bar.close()
        if metrics is not None:
            metrics.close()
        name = signal.Signals(signum).name
        raise Preempted(f"{name} at step {done}: checkpoint saved to "
                        f"{checkpoint.step_dir(self.cfg.run.dir, done)}; run the same command to resume", signum)

    def _finish(self, step: int, metrics: MetricsLog | None) -> dict:
        """Export the model file and prove all ranks hold the same parameters."""
        acc = self.acc
        digest = _params_digest([self.modules[name] for name in self.trained]).to(self.device)
        digests = acc.gather(digest[None]).cpu()
        summary = {
            "step": step,
            "world_size": acc.num_processes,
            "param_sha256_per_rank": [bytes(d.tolist()).hex() for d in digests],
        }
        summary["ranks_identical"] = len(set(summary["param_sha256_per_rank"])) == 1
        if acc.is_main_process:
            run = self.cfg.run.dir
            if not storage.exists(storage.join(run, self.model_file)):
                self.export(step)
            storage.write_bytes(storage.join(run, "world.json"), json.dumps(summary, indent=1).encode())
            if metrics is not None:
                metrics.close()
            lines = [f"done at step {step}", f"  model file:  {storage.join(run, self.model_file)}",
                     f"  checkpoint:  {checkpoint.latest(run)}"]
            if type(self).write_grid is not Trainer.write_grid:
                lines.append(f"  sample grid: {storage.join(run, 'samples', 'latest.png')}")
            lines.append(f"  metrics:     {storage.join(run, 'metrics.jsonl')}")
            console.say("\n".join(lines))
        if not summary["ranks_identical"]:
            raise RuntimeError(f"ranks diverged: parameter digests differ across processes {summary}")
        acc.wait_for_everyone()
        return summary

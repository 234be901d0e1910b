"""`job train`: train a DCGAN (unconditional or class-conditional) on MNIST.

    accelerate launch -m job train --config cdcgan-mnist run.dir=runs/cdcgan
    python -m job train --config debug run.dir=/tmp/run train.steps=20

Data flow: config -> runtime (Accelerator, precision) -> data (whole split on the device)
-> models -> accelerator.prepare (DDP) -> loop of steps.gan_step -> every N steps: a
metrics line, a sample grid PNG, a checkpoint (global main process writes, meta.json last)
-> at the end: the exported generator file and a cross-rank parameter check.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import torch
from tqdm import tqdm

from job import checkpoint, config, data, runtime, storage
from job.errors import BadInput
from job.logs import MetricsLog, grid_png
from job.models import build_gan
from job.steps import ema_update, gan_step

GRID_COLUMNS = 10


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


def _params_digest(*modules: torch.nn.Module) -> torch.Tensor:
    """sha256 of all parameters of `modules`, as a uint8 tensor (to gather across ranks)."""
    h = hashlib.sha256()
    for m in modules:
        for name, p in m.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


class Trainer:
    """Holds the state of one training run; `run()` is the loop."""

    def __init__(self, cfg: config.TrainJob):
        self.cfg = cfg
        # Everything that can reject the input happens before anything is written.
        storage.check_writable(cfg.run.dir)
        resume_from = resolve_resume(cfg)

        self.acc, self.precision, notes = runtime.make_accelerator(cfg.train.mixed_precision)
        acc = self.acc
        self.device = acc.device
        runtime.print0(acc, f"digit-job train: {runtime.describe(acc, self.precision)}")
        runtime.print0(acc, f"digit-job train: writing to {cfg.run.dir}")
        for note in notes:
            runtime.print0(acc, f"digit-job train: note: {note}")

        split = data.load_split(cfg.data.name, cfg.data.root, train=True, device=self.device)
        self.images, self.labels = split.images, split.labels
        self.num_classes = split.num_classes if cfg.model.conditional else 0
        self.channels = split.images.shape[1]

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G, D, self.g_kwargs = build_gan(
            cfg.model.arch, cfg.model.latent_dim, cfg.model.g_width, cfg.model.d_width, self.channels, self.num_classes
        )
        self.ema = copy.deepcopy(G).requires_grad_(False).eval()
        self.start_step = 0
        loaded = None
        if resume_from is not None:
            loaded = checkpoint.load(resume_from)
            try:
                G.load_state_dict(loaded.modules["generator"])
                D.load_state_dict(loaded.modules["discriminator"])
                self.ema.load_state_dict(loaded.modules["generator_ema"])
            except (KeyError, RuntimeError) as e:
                raise BadInput(
                    f"checkpoint {resume_from} does not fit this config ({str(e).splitlines()[0]}); "
                    "use the config it was trained with or a new run.dir"
                ) from None
            self.start_step = loaded.step
            runtime.print0(acc, f"digit-job train: resuming from {resume_from} (step {loaded.step})")

        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        G, D, self.ema = (m.to(memory_format=memory_format) for m in (G, D, self.ema))
        self.G, self.D = acc.prepare(G, D)
        self.ema.to(self.device)
        t = cfg.train
        self.opt_g = torch.optim.Adam(acc.unwrap_model(self.G).parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.opt_d = torch.optim.Adam(acc.unwrap_model(self.D).parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        self.scaler_g, self.scaler_d = self.precision.scaler(), self.precision.scaler()
        if loaded is not None:
            self._restore_training_state(loaded)

        self.batches = data.EpochBatches(
            len(self.images), t.batch_size, acc.process_index, acc.num_processes, cfg.seed, self.device
        )
        self.noise = torch.Generator(device=self.device)
        self.fixed_z, self.fixed_labels = self._fixed_noise()

    # ------------------------------------------------------------------ state

    def _restore_training_state(self, loaded: checkpoint.Checkpoint) -> None:
        self.opt_g.load_state_dict(checkpoint.optimizer_from_files(*loaded.optimizers["generator"]))
        self.opt_d.load_state_dict(checkpoint.optimizer_from_files(*loaded.optimizers["discriminator"]))
        if self.precision.mode == "fp16" and "scaler_g" in loaded.state:
            self.scaler_g.load_state_dict(loaded.state["scaler_g"])
            self.scaler_d.load_state_dict(loaded.state["scaler_d"])
        # Global RNG streams per rank (the training noise itself is counter-based, see _noise).
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
                state = {"scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict()}
            ckpt = checkpoint.Checkpoint(
                step=step,
                modules={
                    "generator": self.acc.unwrap_model(self.G).state_dict(),
                    "discriminator": self.acc.unwrap_model(self.D).state_dict(),
                    "generator_ema": self.ema.state_dict(),
                },
                optimizers={
                    "generator": checkpoint.optimizer_to_files(self.opt_g),
                    "discriminator": checkpoint.optimizer_to_files(self.opt_d),
                },
                rng=rng,
                state=state,
                config=config.to_dict(self.cfg),
            )
            checkpoint.save(self.cfg.run.dir, ckpt)
            checkpoint.prune(self.cfg.run.dir, self.cfg.train.keep_checkpoints)
            self.export_generator(step)
        self.acc.wait_for_everyone()

    def export_generator(self, step: int) -> None:
        checkpoint.export_generator(
            storage.join(self.cfg.run.dir, checkpoint.GENERATOR_FILE),
            self.ema.state_dict(),
            kind="dcgan",
            arch=self.cfg.model.arch,
            kwargs=self.g_kwargs,
            step=step,
        )

    # ------------------------------------------------------------------ noise and grids

    def _noise(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z and fake labels for (seed, rank, step): counter-based, so resuming at any step
        draws exactly what an uninterrupted run would, with no generator state to carry."""
        self.noise.manual_seed(runtime.stream_seed(self.cfg.seed, self.acc.process_index, step))
        b = self.cfg.train.batch_size
        z = torch.randn(b, self.cfg.model.latent_dim, generator=self.noise, device=self.device)
        labels = None
        if self.num_classes:
            labels = torch.randint(0, self.num_classes, (b,), generator=self.noise, device=self.device)
        return z, labels

    def _fixed_noise(self):
        """The same noise for every grid of the run: one row per class when conditional."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        n = GRID_COLUMNS * (self.num_classes or 8)
        z = torch.randn(n, self.cfg.model.latent_dim, generator=g).to(self.device)
        labels = None
        if self.num_classes:
            labels = torch.arange(self.num_classes).repeat_interleave(GRID_COLUMNS).to(self.device)
        return z, labels

    @torch.no_grad()
    def write_grid(self, step: int) -> str:
        with self.precision.autocast():
            images = self.ema(self.fixed_z, self.fixed_labels)
        png = grid_png(images, nrow=GRID_COLUMNS)
        uri = storage.join(self.cfg.run.dir, "samples", f"step-{step:08d}.png")
        storage.write_bytes(uri, png)
        storage.write_bytes(storage.join(self.cfg.run.dir, "samples", "latest.png"), png)
        return uri

    # ------------------------------------------------------------------ loop

    def run(self) -> dict:
        cfg, acc, t = self.cfg, self.acc, self.cfg.train
        if acc.is_main_process:
            storage.write_bytes(storage.join(cfg.run.dir, "config.yaml"), config.to_yaml(cfg).encode())
        metrics = MetricsLog(cfg.run.dir, self.start_step) if acc.is_main_process else None
        if self.start_step >= t.steps:
            runtime.print0(acc, f"digit-job train: already at step {self.start_step} of {t.steps}; nothing to do")
            return self._finish(self.start_step, metrics)

        image_size = cfg.data.image_size
        bar = tqdm(
            total=t.steps, initial=self.start_step, disable=not (acc.is_main_process and t.progress),
            desc="train", unit="step", dynamic_ncols=True,
        )
        window_start, window_steps = time.perf_counter(), 0
        for step in range(self.start_step, t.steps):
            idx = self.batches.indices(step)
            real = data.to_model_input(self.images[idx], image_size, t.channels_last)
            real_labels = self.labels[idx] if self.num_classes else None
            z, fake_labels = self._noise(step)
            out = gan_step(
                self.G, self.D, self.opt_g, self.opt_d, self.scaler_g, self.scaler_d, self.precision,
                real, real_labels, z, fake_labels, no_sync_d=lambda: acc.no_sync(self.D),
            )
            # Warm-up so early grids are not dominated by the random initial weights.
            done = step + 1
            ema_update(self.ema, acc.unwrap_model(self.G), min(t.ema_decay, (1 + done) / (10 + done)))
            bar.update(1)
            window_steps += 1

            last = done == t.steps
            if done % t.log_every == 0 or last:
                stats = {k: acc.reduce(v, reduction="mean").item() for k, v in out.items()}
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": done,
                    **{k: round(v, 6) for k, v in stats.items()},
                    "images_per_s": round(window_steps * t.batch_size * acc.num_processes / elapsed, 1),
                }
                if metrics is not None:
                    metrics.log(record)
                    metrics.flush()
                bar.set_postfix(loss_d=f"{stats['loss_d']:.3f}", loss_g=f"{stats['loss_g']:.3f}")
                window_start, window_steps = time.perf_counter(), 0
            if acc.is_main_process and (done % t.sample_every == 0 or last):
                self.write_grid(done)
            if done % t.checkpoint_every == 0 or last:
                self.save_checkpoint(done)
        bar.close()
        return self._finish(t.steps, metrics)

    def _finish(self, step: int, metrics: MetricsLog | None) -> dict:
        """Export the generator and prove all ranks hold the same parameters."""
        acc = self.acc
        digest = _params_digest(acc.unwrap_model(self.G), acc.unwrap_model(self.D)).to(self.device)
        digests = acc.gather(digest[None]).cpu()
        summary = {
            "step": step,
            "world_size": acc.num_processes,
            "param_sha256_per_rank": [bytes(d.tolist()).hex() for d in digests],
        }
        summary["ranks_identical"] = len(set(summary["param_sha256_per_rank"])) == 1
        if acc.is_main_process:
            if not storage.exists(storage.join(self.cfg.run.dir, checkpoint.GENERATOR_FILE)):
                self.export_generator(step)
            storage.write_bytes(storage.join(self.cfg.run.dir, "world.json"), json.dumps(summary, indent=1).encode())
            if metrics is not None:
                metrics.close()
            run = self.cfg.run.dir
            print(f"digit-job train: done at step {step}", flush=True)
            print(f"  generator:   {storage.join(run, checkpoint.GENERATOR_FILE)}", flush=True)
            print(f"  checkpoint:  {checkpoint.latest(run)}", flush=True)
            print(f"  sample grid: {storage.join(run, 'samples', 'latest.png')}", flush=True)
            print(f"  metrics:     {storage.join(run, 'metrics.jsonl')}", flush=True)
        if not summary["ranks_identical"]:
            raise RuntimeError(f"ranks diverged: parameter digests differ across processes {summary}")
        acc.wait_for_everyone()
        return summary


def main(cfg: config.TrainJob) -> int:
    Trainer(cfg).run()
    return 0

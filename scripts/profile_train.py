"""Where a DCGAN training step spends its time: torch.profiler over the real step function.

    .venv/bin/python scripts/profile_train.py                 # dcgan28 and dcgan64, fp32
    .venv/bin/python scripts/profile_train.py --precision bf16 --arch dcgan28

Builds the conditional G and D of the presets (width 64, channels_last, fused Adam), runs
job.training.steps.gan_step on in-memory batches (no data loading: this is the compute), and prints
the operators by self time with their input shapes, plus the achieved GFLOP/s of the
convolutions (forward and backward) so that one can tell a slow kernel from a busy one.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


class ConvFlops:
    """Counts the FLOPs of every forward convolution (2 per multiply-add) of some modules, from
    their real shapes (the profiler counts only conv2d, not conv_transpose2d)."""

    def __init__(self, *modules: torch.nn.Module):
        self.flops = 0
        for module in modules:
            for m in module.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    m.register_forward_hook(self._count)

    def _count(self, m, inputs, output) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.ConvTranspose2d):  # every input pixel meets every output channel
            self.flops += 2 * inputs[0].numel() * m.out_channels * k // m.groups
        else:  # every output pixel meets every input channel
            self.flops += 2 * output.numel() * m.in_channels * k // m.groups


def profile_arch(arch: str, precision_mode: str, batch: int, steps: int) -> None:
    from job.core.precision import resolve
    from job.models import build_gan
    from job.training.steps import adam, gan_step

    size = 28 if arch == "dcgan28" else 64
    torch.manual_seed(0)
    G, D, _ = build_gan(arch, 100, 64, 64, 1, 10, False, size)
    G, D = (m.to(memory_format=torch.channels_last) for m in (G, D))
    opt_g = adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    precision = resolve(precision_mode, "cpu")
    real = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step():
        gan_step(G, D, opt_g, opt_d, precision.scaler(), precision.scaler(), precision, real, labels,
                 torch.randn(batch, 100), labels)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    counter = ConvFlops(G, D)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    conv_us = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    forward_us = sum(e.cpu_time_total for e in events if e.key == "aten::convolution")
    print(f"\n== {arch}, {precision.describe()}, batch {batch}: {steps * batch / seconds:.0f} images/s unprofiled; "
          f"convolutions (forward and backward) {100 * conv_us / total_us:.0f}% of self time; forward "
          f"convolutions at {counter.flops / (forward_us / 1e6) / 1e9:.0f} GFLOP/s", flush=True)
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=32, max_shapes_column_width=60))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["dcgan28", "dcgan64", "both"], default="both")
    p.add_argument("--precision", choices=["auto", "no", "bf16"], default="no")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 30 at 28x28, 5 at 64x64)")
    args = p.parse_args()
    for arch in (["dcgan28", "dcgan64"] if args.arch == "both" else [args.arch]):
        profile_arch(arch, args.precision, args.batch, args.steps or (30 if arch == "dcgan28" else 5))


if __name__ == "__main__":
    main()

"""Helpers shared by the scripts/bench_*.py benchmarks: data location, device name, JSON out."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results"


def use_default_data_dir() -> None:
    """Point DIGITS_DATA_DIR at ../shared/datasets/mnist when unset and present (offline machines)."""
    shared = REPO.parent / "shared" / "datasets" / "mnist"
    if not os.environ.get("DIGITS_DATA_DIR") and shared.is_dir():
        os.environ["DIGITS_DATA_DIR"] = str(shared)


def machine() -> dict:
    import torch

    from job.core import precision

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_bf16_units": precision.cpu_bf16_units(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_model() -> str:
    """The CPU's model name, as job.core.precision keys its measurements by it."""
    from job.core.precision import cpu_model as model_name

    return model_name()


def device_tag() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    return f"cpu-{os.cpu_count()}core"


def write_results(name: str, payload: dict, folder: Path = RESULTS) -> Path:
    """Write <folder>/<name>-<device>.json (default bench-results/) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device_tag()}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def run_watched(cmd: list[str], env: dict | None = None, stop_when=None, stop_signal: int = 15):
    """Run `cmd` from the repository root, polling its peak RSS (process and children).

    `stop_when()`, polled every 0.1 s, may return True once to send `stop_signal` to the
    process (a preemption in the middle). Returns (returncode, output, peak RSS bytes, wall s).
    """
    import subprocess

    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    ps, peak, signalled = psutil.Process(proc.pid), 0, False
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            break
        if stop_when is not None and not signalled and stop_when():
            proc.send_signal(stop_signal)
            signalled = True
        time.sleep(0.1)
    output = proc.stdout.read()
    proc.wait()
    return proc.returncode, output, peak, time.perf_counter() - started


def run_job(*args: str) -> float:
    """Run `python -m job ...`; return its wall time in seconds (fail loudly)."""
    import subprocess

    started = time.perf_counter()
    cmd = [sys.executable, "-m", "job", *args]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - started


class Stages:
    """Runs each stage once, remembering its wall time in <work>/seconds.json."""

    def __init__(self, work: Path):
        self.path = work / "seconds.json"
        self.seconds = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.ran: set[str] = set()

    def __call__(self, name: str, done: bool, *args: str) -> None:
        if done and name in self.seconds:
            print(f"= {name}: already done ({self.seconds[name]:.0f} s)", flush=True)
            return
        self.seconds[name] = self.seconds.get(name, 0.0) + run_job(*args)
        self.ran.add(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.seconds, indent=1))


def trained_to(run_dir: Path, steps: int) -> bool:
    from job.training import checkpoint

    done = checkpoint.complete_steps(str(run_dir))
    return bool(done) and max(done) >= steps

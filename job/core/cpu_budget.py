"""How many CPU threads this container may use: the pod's CPU limit, not the host's cores.

`os.cpu_count()` reports the node's cores (64 on a big node) even when the pod's limit is 4:
threads sized from it thrash against the CFS quota. The budget is the smallest of the CPU
affinity, the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) rounded down, and
`OMP_NUM_THREADS` when set (Kubernetes fills it from `limits.cpu`). torch-free, so the
container entrypoint can ask it cheaply:

    python -m job.core.cpu_budget          # prints the number
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by the cgroup's CFS quota, or None when unlimited or unreadable."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):  # cgroup v1
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 else quota / period
    return None


def available(root: Path = CGROUP) -> int:
    """Threads this container should use in all (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cpus = min(cpus, int(omp))
    return max(1, cpus)


if __name__ == "__main__":
    print(available())

"""The Accelerator and everything that depends on where the job runs.

One place decides: device (CUDA if present, else CPU even under a multi-GPU launch, unless
the pod asked for GPUs: DIGITS_REQUIRE_GPU=1), precision (job/core/precision.py: auto, bf16 only
where the device runs it fast), CPU threads per process (from the container's CPU limit),
how long a collective may wait for a silent peer, and printing from the main process only.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from job.core import cpu_budget
from job.core.errors import DeviceMissing, PeerLost
from job.core.precision import Precision, resolve

# A collective waits this long for a peer that neither answers nor closes its connection
# (a node that vanished) before the job gives up with PeerLost; torch's default is 30 min.
# A closed connection (a killed pod) is noticed at once. Override: DIGITS_COLLECTIVE_TIMEOUT.
COLLECTIVE_TIMEOUT_S = 600


def make_accelerator(requested_precision: str, deterministic: bool = False,
                     unmeasured: str = "fp32 until measured") -> tuple[Accelerator, Precision]:
    """Build the Accelerator for this process. Returns (accelerator, precision): the
    precision as far as it is known without measuring (precision.choose measures CPU auto;
    where nothing is measured, CPU auto is fp32 and `unmeasured` says why).
    deterministic: no cuDNN autotuning, whose kernel choice can vary from run to run (sampling
    and evaluation, where the bytes must depend on the plan alone).

    Without CUDA, Accelerator must be told cpu=True: otherwise a 2-process launch quietly
    runs two unrelated single-process jobs instead of one gloo job.
    """
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("DIGITS_REQUIRE_GPU") == "1":
        raise DeviceMissing(
            "DIGITS_REQUIRE_GPU=1 (the pod asked for GPUs) but torch sees no usable CUDA device "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda}): check the node's NVIDIA driver and "
            "device plugin, or run with the cpu overlay / without DIGITS_REQUIRE_GPU"
        )
    timeout = datetime.timedelta(seconds=float(os.environ.get("DIGITS_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT_S)))
    # Precision is handled here (autocast + per-optimizer scalers), not by accelerate,
    # whose single GradScaler would be shared by G and D.
    accelerator = Accelerator(cpu=not cuda, mixed_precision="no",
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if not cuda:
        # The container's CPU budget (its cgroup limit, not the node's cores); shared between
        # this node's processes unless the launcher already gave each its OMP_NUM_THREADS.
        threads = cpu_budget.available()
        if "OMP_NUM_THREADS" not in os.environ:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.state.num_processes))
            threads = max(1, threads // local)
        torch.set_num_threads(threads)
    if cuda:
        torch.backends.cudnn.benchmark = not deterministic
    precision = resolve(requested_precision, accelerator.device, unmeasured)
    precision.apply()  # TF32 only when asked for: fp32 means fp32
    return accelerator, precision


def from_main(accelerator: Accelerator, value):
    """The main process's `value` on every process (a broadcast; as is with one process)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]


def describe(accelerator: Accelerator, precision: Precision) -> str:
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({torch.get_num_threads()} threads/process)"
    return f"device={device.type} [{name}] world_size={accelerator.num_processes} precision={precision.describe()}"


# What a collective raises when the process at the other end is gone (gloo's "Connection
# reset/closed by peer", NCCL's aborted communicator, a store that stopped answering).
_PEER_GONE = ("connection reset by peer", "connection closed by peer", "broken pipe", "nccl communicator was aborted",
              "ncclremoteerror", "timed out", "timeout", "connection refused")


def peer_lost(error: BaseException) -> PeerLost | None:
    """The PeerLost that `error` means, when it is a collective failing in a multi-process
    job because another process went away; None for anything else (a real bug keeps its
    traceback). Reads torch.distributed only if the job already imported it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    dist_error = getattr(dist, "DistError", ())
    text = str(error).lower()
    if not (isinstance(error, dist_error) or (isinstance(error, RuntimeError) and any(p in text for p in _PEER_GONE))):
        return None
    first = " ".join(str(error).split())[:200]
    return PeerLost(
        f"rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another process of this job ({first}); "
        "a peer pod was stopped, preempted or crashed (see its log). Finished checkpoints are kept: "
        "restart the whole group and resume=auto continues from the newest one"
    )

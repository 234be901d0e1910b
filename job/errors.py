"""Errors that reach the user as one line on stderr (see cli.main), by exit code.

- BadInput (exit 2): the user handed over something wrong (config, URI, file,
  credentials). Retrying the same command cannot help; nothing was written.
- StorageUnreachable (exit 3): storage did not answer within the configured time. A
  fault: a Kubernetes Job may retry it.
- DeviceMissing (exit 4): the pod asked for GPUs (DIGITS_REQUIRE_GPU=1) and none is usable.
  A node fault: a retry may land on a healthy node; training on CPU instead would hold
  the GPUs for nothing.
- PeerLost (exit 5): another process of a multi-process job went away mid-run (a preempted
  or killed pod). Not this process's fault: the multi-node Job ignores it (podFailurePolicy)
  and the restarted group resumes from the newest checkpoint.
Any other exception is a bug or a fault: it keeps its traceback and exits 1.
"""


class JobError(Exception):
    """An expected failure with a message that says what and how to fix it."""

    exit_code = 1


class BadInput(JobError):
    exit_code = 2


class StorageUnreachable(JobError):
    exit_code = 3


class DeviceMissing(JobError):
    exit_code = 4


class PeerLost(JobError):
    exit_code = 5

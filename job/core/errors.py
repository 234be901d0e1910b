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
- WriteFailed (exit 6): the local file system refused a write (full disk, read-only,
  no permission, a name too long, a file where a folder is needed). Finished work is
  kept (writes are atomic); once the cause is fixed the same command completes the run.
Any other exception is a bug or a fault: it keeps its traceback and exits 1.
"""


import errno


class JobError(Exception):
    """An expected failure with a message that says what and how to fix it."""

    exit_code = 1


class BadInput(JobError):
    exit_code = 2


class NotThere(BadInput, FileNotFoundError):
    """A file or object that does not exist (a FileNotFoundError for code that reads sets
    through job.readers, BadInput for the commands)."""


class AccessDenied(BadInput, PermissionError):
    """Storage refused to let this user read or write (a PermissionError for readers' users)."""


class StorageUnreachable(JobError):
    exit_code = 3


class DeviceMissing(JobError):
    exit_code = 4


class PeerLost(JobError):
    exit_code = 5


class WriteFailed(JobError):
    exit_code = 6


# What the file system says, and what to do about it.
_WRITE_HINTS = {
    errno.ENOSPC: "free some space there", errno.EDQUOT: "free some space there (the quota is full)",
    errno.EROFS: "that file system is read-only: mount it writable or write elsewhere",
    errno.EACCES: "give this user write permission there, or write elsewhere",
    errno.EPERM: "give this user write permission there, or write elsewhere",
    errno.ENAMETOOLONG: "use a shorter name", errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed", errno.EISDIR: "a folder stands where a file is needed",
}


def write_failed(error: OSError, path: str | None = None) -> WriteFailed | None:
    """The WriteFailed that a file system error while writing `path` means, or None when
    `error` is something else (a socket's, say): one line naming the path and the cause."""
    if error.errno not in _WRITE_HINTS:
        return None
    where = path or error.filename or "a local file"
    cause = error.strerror or errno.errorcode.get(error.errno, str(error))
    return WriteFailed(f"cannot write {where}: {cause} ({_WRITE_HINTS[error.errno]}); finished work is kept, "
                       "run the same command again once that is fixed")

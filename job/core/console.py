"""The job's lines for people, in one format: `digit-job <command>: <message>`.

One `logging` logger ("digit-job") with two handlers: information on stdout, warnings
(an input skipped, ...) and progress lines on stderr, each line flushed as it is written so the lines of
several processes and the progress bar interleave sensibly. `cli` names the command once
(`set_command`); modules call `say`, `say0` (the global main process only), `progress` or
`warn`. A message of several lines is prefixed on its first line only.
Errors are not logged here: cli prints them as the one `error: ...` line on stderr.
"""

from __future__ import annotations

import logging
import sys

_logger = logging.getLogger("digit-job")
_command = "job"


class _CommandPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"digit-job {_command}: {record.getMessage()}"


def _to_stderr(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or getattr(record, "to_stderr", False)


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (pytest swaps them)."""

    def __init__(self, name: str):
        super().__init__()
        self.name_of_stream = name

    @property
    def stream(self):
        return getattr(sys, self.name_of_stream)

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ sets it; the property wins
        pass


def _configure() -> None:
    out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
    out.addFilter(lambda record: not _to_stderr(record))
    err.addFilter(_to_stderr)
    for handler in (out, err):
        handler.setFormatter(_CommandPrefix())
        _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False  # a launcher's root logger must not print our lines twice


_configure()


def set_command(command: str) -> None:
    """Name the command every line is prefixed with (cli, once per run)."""
    global _command
    _command = command


def say(message: str) -> None:
    """One line on stdout, from this process."""
    _logger.info(message)


def say0(accelerator, message: str) -> None:
    """One line on stdout, from the global main process only (once per job)."""
    if accelerator.is_main_process:
        _logger.info(message)


def progress(message: str) -> None:
    """A progress line, on stderr like a progress bar (job/core/progress.py)."""
    _logger.info(message, extra={"to_stderr": True})


def warn(message: str) -> None:
    """One line on stderr (something skipped or degraded; the job goes on)."""
    _logger.warning(message)


def count(n: int, noun: str) -> str:
    """'1 shard', '2 shards': a number and its noun, plural where it should be."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

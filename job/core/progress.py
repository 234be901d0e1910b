"""Progress a person reads: a tqdm bar on a terminal, plain periodic lines in a pod's log
(which is not a terminal and would otherwise fill with carriage-return bars)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from job.core import console


class PlainProgress:
    """tqdm's update/set_postfix/close, printed as a plain line at most every `every_s`
    seconds and at the end: a pod log (not a terminal) gets no carriage-return bar."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, every_s: float):
        self.total, self.n, self.desc, self.unit, self.every_s = total, initial, desc, unit, every_s
        self.postfix: dict = {}
        self._started = self._last = time.monotonic()
        self._start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._print()

    def set_postfix(self, postfix: dict) -> None:
        self.postfix = dict(postfix)

    def close(self) -> None:
        if self.n > self._start_n:
            self._print()

    def _print(self) -> None:
        self._last = time.monotonic()
        rate = (self.n - self._start_n) / max(self._last - self._started, 1e-9)
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        console.progress(f"{self.n}/{self.total} {self.unit}s ({rate:.1f} {self.unit}s/s){extra}")


def progress_bar(enabled: bool, total: int, desc: str, unit: str, initial: int = 0, every_s: float = 30.0, **bar):
    """A tqdm bar when stderr is a terminal, plain periodic lines otherwise, nothing when
    not `enabled` (other ranks, progress=false)."""
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, **bar)
    return PlainProgress(total, initial, desc, unit, every_s)

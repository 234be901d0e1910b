"""Seeds derived from integers, so that a random stream is a function of what it is for
(base seed, shard index, rank, step, epoch) and never of timing or process count."""

from __future__ import annotations

import hashlib


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (base seed, rank, step, ...), stable everywhere."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)

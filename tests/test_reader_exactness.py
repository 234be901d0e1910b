"""The stream is exact in every recipe README shows, for any set, ranks, workers and batch
size: every digit of the epoch seen, repeats only within the documented bound, and
len(loader) equal to the batches each rank yields. Checked without launching processes by
hypothesis: the stream's own split and worker blocks (its real code, with DataLoader worker
info stood in), DataLoader's round-robin over workers, and accelerate's two ways of splitting
an iterable dataset: its IterableDatasetShard itself (dispatch_batches=False) and a model of
its DataLoaderDispatcher (the default; it broadcasts, so it cannot run in one process).
The real 2- and 3-process launches are in tests/test_readers.py."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from job.shardsets import readers

accelerate_data_loader = pytest.importorskip("accelerate.data_loader")


@pytest.fixture(scope="module")
def one_set(tmp_path_factory, generator_file) -> str:
    from job.cli import main

    out = tmp_path_factory.mktemp("exactness") / "set"
    assert main(["sample", f"generator={generator_file}", f"out={out}", "count=7", "shard_size=3",
                 "progress=false"]) == 0
    return str(out)


def stream_over(uri: str, counts: list[int], **kwargs) -> readers.ShardStream:
    """A stream whose epoch has shards of `counts` items: positions are all the split and the
    worker blocks depend on (reading maps them one to one onto the digits)."""
    stream = readers.ShardStream(uri, verify=False, **kwargs)
    stream.counts = counts
    return stream


def worker_positions(stream, monkeypatch, workers: int, wrapper=None) -> list[list[int]]:
    """The epoch positions each DataLoader worker of this process yields, in order."""
    if workers == 0:
        monkeypatch.setattr(readers, "get_worker_info", lambda: None)
        return [list(stream._positions(*stream._ranks(), *stream._workers()))]
    out = []
    for worker in range(workers):
        info = SimpleNamespace(id=worker, num_workers=workers, dataset=wrapper or stream)
        monkeypatch.setattr(readers, "get_worker_info", lambda info=info: info)
        rank, ranks = stream._ranks()
        out.append(list(stream._positions(rank, ranks, *stream._workers())))
    return out


def loader_batches(per_worker: list[list], batch: int, drop_last: bool) -> list[list]:
    """What a DataLoader yields from an iterable dataset: each worker batches its own items
    (dropping its own short batch with drop_last), and the workers' batches come in turn."""
    chunked = []
    for items in per_worker:
        batches = [items[i:i + batch] for i in range(0, len(items), batch)]
        chunked.append([b for b in batches if len(b) == batch or not drop_last])
    out, k = [], 0
    while any(k < len(c) for c in chunked):
        out += [c[k] for c in chunked if k < len(c)]
        k += 1
    return out


def loader_len(dataset_len: int, batch: int, drop_last: bool) -> int:
    return dataset_len // batch if drop_last else math.ceil(dataset_len / batch)


def dispatched(batches: list[list], processes: int, drop_last: bool) -> list[list[list]]:
    """accelerate's DataLoaderDispatcher (split_batches=False): process 0 takes `processes`
    batches at a time, joins them and every process keeps its slice (observed // processes,
    the last group padded from the epoch's first items when drop_last is False)."""
    per_process = [[] for _ in range(processes)]
    first = None
    groups = [batches[i:i + processes] for i in range(0, len(batches), processes)]
    for g, group in enumerate(groups):
        last = g == len(groups) - 1
        if len(group) < processes and drop_last:
            break
        joined = [x for b in group for x in b]
        if first is None:
            first = joined[:processes]
        size = len(joined) // processes
        if last and not drop_last and len(joined) % processes:
            joined += first
            size += 1
        for p in range(processes):
            per_process[p].append(joined[p * size:(p + 1) * size])
    return per_process


SHARDS = st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda c: sum(c) > 0)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(counts=SHARDS, ranks=st.integers(1, 4), workers=st.integers(0, 4), batch=st.integers(1, 12),
       stream_drop_last=st.booleans(), loader_drop_last=st.booleans())
def test_the_streams_own_split_gives_every_rank_the_same_steps_and_pads_like_distributedsampler(
        one_set, monkeypatch, counts, ranks, workers, batch, stream_drop_last, loader_drop_last):
    n = sum(counts)
    per_rank = []
    for rank in range(ranks):
        stream = stream_over(one_set, counts, split="rank", rank=rank, world_size=ranks, batch_size=batch,
                             drop_last=stream_drop_last)
        batches = loader_batches(worker_positions(stream, monkeypatch, workers), batch, loader_drop_last)
        assert len(batches) == loader_len(len(stream), batch, loader_drop_last)  # len(loader) is true
        per_rank.append(batches)
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    seen = Counter(p for batches in per_rank for b in batches for p in b)
    if not loader_drop_last:
        if stream_drop_last:  # N // ranks each, the last N % ranks left out, none twice
            assert max(seen.values()) == 1 and len(seen) == n - n % ranks
        else:  # ceil(N / ranks) each: every digit, the epoch's first ranks - N % ranks twice
            assert set(seen) == set(range(n)) and sum(seen.values()) - n == (-n) % ranks


@SETTINGS
@given(counts=SHARDS, processes=st.integers(1, 4), workers=st.integers(0, 4), batch=st.integers(1, 12),
       drop_last=st.booleans())
def test_prepared_with_batches_dispatched_every_digit_is_seen_and_only_the_last_batch_pads(
        one_set, monkeypatch, counts, processes, workers, batch, drop_last):
    n = sum(counts)
    stream = stream_over(one_set, counts, split="none", batch_size=batch)  # process 0 reads for everyone
    base = loader_batches(worker_positions(stream, monkeypatch, workers), batch, drop_last)
    assert len(base) == loader_len(len(stream), batch, drop_last)
    per_process = dispatched(base, processes, drop_last)
    announced = len(base) // processes if drop_last else math.ceil(len(base) / processes)  # the dispatcher's len
    assert [len(b) for b in per_process] == [announced] * processes
    seen = Counter(p for batches in per_process for b in batches for p in b)
    if drop_last:  # whole groups of batches only: nothing twice, fewer than one batch per process lost
        assert max(seen.values(), default=1) == 1 and n - len(seen) < batch * processes
    else:  # every digit; the last group padded by fewer than one digit per process
        assert set(seen) == set(range(n)) and sum(seen.values()) - n < processes


@SETTINGS
@given(counts=SHARDS, processes=st.integers(1, 4), workers=st.integers(0, 4), batch=st.integers(1, 12),
       drop_last=st.booleans())
def test_prepared_with_every_process_reading_every_digit_is_seen_and_only_the_last_batch_pads(
        one_set, monkeypatch, counts, processes, workers, batch, drop_last):
    shard = accelerate_data_loader.IterableDatasetShard
    n = sum(counts)
    per_process = []
    for p in range(processes):
        stream = stream_over(one_set, counts, split="none", batch_size=batch)
        wrapper = shard(stream, batch_size=batch, drop_last=drop_last, num_processes=processes, process_index=p)
        per_worker = []
        for positions in worker_positions(stream, monkeypatch, workers, wrapper if workers else None):
            wrapped = shard(positions, batch_size=batch, drop_last=drop_last, num_processes=processes, process_index=p)
            wrapped.epoch = 0
            per_worker.append(list(wrapped))  # accelerate's own code splits this worker's items
        batches = loader_batches(per_worker, batch, drop_last)
        assert len(batches) == loader_len(len(wrapper), batch, drop_last)  # len(loader) is true
        per_process.append(batches)
    assert len({len(b) for b in per_process}) == 1
    seen = Counter(pos for batches in per_process for b in batches for pos in b)
    if drop_last:
        assert max(seen.values(), default=1) == 1 and n - len(seen) < batch * processes
    else:  # every digit; the last group padded by fewer than one batch per process
        assert set(seen) == set(range(n)) and sum(seen.values()) - n < batch * processes


def test_without_batch_size_several_workers_are_refused_before_the_first_batch(one_set, monkeypatch):
    stream = readers.ShardStream(one_set, split="none")
    monkeypatch.setattr(readers, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=4, dataset=stream))
    with pytest.raises(ValueError, match=r"num_workers=4 needs batch_size= \(the DataLoader's\)"):
        iter(stream)


def test_the_rank_split_under_a_wrapper_that_splits_again_is_refused(one_set, monkeypatch):
    stream = readers.ShardStream(one_set, split="rank", rank=0, world_size=2, batch_size=2)
    wrapper = accelerate_data_loader.IterableDatasetShard(stream, batch_size=2, num_processes=2, process_index=0)
    monkeypatch.setattr(readers, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=2, dataset=wrapper))
    with pytest.raises(ValueError, match="use split='none' when the DataLoader is prepared"):
        iter(stream)

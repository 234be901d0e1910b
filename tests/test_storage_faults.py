"""Storage faults against a real SeaweedFS server: a fault-injecting proxy (tests/faultproxy.py)
sits between the job and the server and answers a seeded share of the requests with 500s,
503s, dropped connections, stalls and bodies cut off half-way. The job must finish with the
same bytes it writes without faults; a server killed mid-sampling and restarted must lead,
after a rerun, to a complete shard set with no duplicates or gaps."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from conftest import REPO, read_metrics, train
from faultproxy import FaultProxy

pytestmark = pytest.mark.s3


def direct_client(server):
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name=server.region)


def object_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys_under(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def faulty_store(s3_server, monkeypatch):
    """Point this process (and what it starts) at a proxy that faults about 30% of requests.
    Reads time out after 2 s, so the proxy's 3 s stalls are real timeouts for the client."""
    from job import storage

    proxy = FaultProxy(s3_server.endpoint, rate=0.3, seed=7, stall_s=3.0).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("DIGITS_S3_READ_TIMEOUT", "2")
    storage.reset_client()
    yield proxy
    proxy.stop()
    storage.reset_client()


def test_training_through_a_faulty_store_saves_the_same_bytes_as_a_clean_run(faulty_store, bucket, s3_server,
                                                                            tmp_path):
    from job.training import checkpoint

    run_uri = f"s3://{bucket}/run"
    assert train(run_uri, "train.steps=6") == 0
    # Resume through the faults too: checkpoint reads are verified against meta.json.
    assert train(run_uri, "train.steps=9", "train.checkpoint_every=3") == 0
    assert checkpoint.complete_steps(run_uri) == [6, 9]
    faulty_store.rate = 0
    loaded = checkpoint.load(checkpoint.latest(run_uri))
    assert loaded.step == 9

    clean = tmp_path / "clean"
    assert train(clean, "train.steps=6") == 0
    assert train(clean, "train.steps=9", "train.checkpoint_every=3") == 0
    client = direct_client(s3_server)
    assert object_bytes(client, bucket, "run/generator.safetensors") == (clean / "generator.safetensors").read_bytes()
    metrics = [json.loads(line) for line in object_bytes(client, bucket, "run/metrics.jsonl").decode().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 10))
    assert [m["loss_g"] for m in metrics] == [m["loss_g"] for m in read_metrics(clean)]
    assert sum(faulty_store.faults.values()) >= 10 and len(faulty_store.faults) >= 4, faulty_store.faults


def test_sampling_through_a_faulty_store_writes_every_shard_as_the_manifest_says(faulty_store, bucket, s3_server,
                                                                                generator_file, tmp_path):
    from job.cli import main

    args = ["sample", f"generator={generator_file}", "count=1000", "shard_size=100", "progress=false", "writers=3"]
    assert main([*args, f"out=s3://{bucket}/digits"]) == 0
    assert main([*args, f"out={tmp_path / 'clean'}"]) == 0
    faulty_store.rate = 0

    client = direct_client(s3_server)
    manifest = json.loads(object_bytes(client, bucket, "digits/manifest.json"))
    assert [s["index"] for s in manifest["shards"]] == list(range(10))
    for shard in manifest["shards"]:
        for name, info in shard["files"].items():
            data = object_bytes(client, bucket, f"digits/{name}")
            assert hashlib.sha256(data).hexdigest() == info["sha256"], name
            assert data == (tmp_path / "clean" / name).read_bytes(), name
    assert sum(faulty_store.faults.values()) >= 5, faulty_store.faults


def test_a_store_killed_mid_sampling_then_restarted_gives_a_complete_set_after_a_rerun(generator_file, tmp_path):
    """SIGKILL the SeaweedFS server while shards are being written: the job stops with exit
    3 (storage unreachable); the server comes back (new ports, same data, behind the same
    endpoint: the proxy) and a rerun of the same command completes the set."""
    import s3_local

    folder = tmp_path / "seaweedfs"
    server = s3_local.start(folder, buckets=["digits"])
    proxy = FaultProxy(server.endpoint).start()
    env = {**os.environ, **server.env(), "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "3",
           "DIGITS_S3_CONNECT_TIMEOUT": "1", "DIGITS_S3_READ_TIMEOUT": "2"}
    command = [sys.executable, "-m", "job", "sample", f"generator={generator_file}", "count=20000", "shard_size=250",
               "out=s3://digits/set", "progress=false", "writers=2", "queue=2"]
    try:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = direct_client(server)
        deadline = time.monotonic() + 120
        while len(keys_under(client, "digits", "set/_records/shard-")) < 5:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
        out, err = job.communicate(timeout=120)
        assert job.returncode == 3, err
        assert err.strip().splitlines()[-1].startswith("error: ") and "unreachable" in err, err

        (folder / "server.json").unlink()
        server = s3_local.start(folder)
        proxy.set_upstream(server.endpoint)
        client = direct_client(server)
        done_before = len(keys_under(client, "digits", "set/_records/shard-"))
        assert 5 <= done_before < 80
        rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr

        manifest = json.loads(object_bytes(client, "digits", "set/manifest.json"))
        assert [s["index"] for s in manifest["shards"]] == list(range(80)) and manifest["count"] == 20000
        shard_keys = [k for k in keys_under(client, "digits", "set/") if k.startswith("set/shard-")]
        assert shard_keys == sorted(f"set/shard-{i:06d}.safetensors" for i in range(80))  # no extras, no gaps
        for shard in manifest["shards"]:
            for name, info in shard["files"].items():
                assert hashlib.sha256(object_bytes(client, "digits", f"set/{name}")).hexdigest() == info["sha256"]
    finally:
        proxy.stop()
        s3_local.stop(folder)
        if Path(folder / "server.json").exists():
            s3_local.stop(folder)

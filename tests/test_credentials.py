"""Credentials never leak: a run that used S3 keys (data push, train, sample, evaluate, and a
run refused for a wrong key) has neither the access key id nor the secret in its console
output, its saved config, metrics, checkpoints' meta.json, model files or manifests."""

from __future__ import annotations

import os

import boto3
import pytest

from job import storage
from job.cli import main

pytestmark = pytest.mark.s3


def every_object(server, bucket: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name=server.region)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_no_credential_appears_in_outputs_logs_configs_or_manifests(s3_server, bucket, capfd, monkeypatch):
    root = f"s3://{bucket}"
    commands = [
        ["data", "push", "mnist", f"{root}/datasets/mnist"],
        ["train", "--config", "debug", f"run.dir={root}/run", f"data.root={root}/datasets/mnist"],
        ["sample", f"generator={root}/run/generator.safetensors", "count=200", "shard_size=100",
         f"out={root}/digits", "progress=false"],
        ["evaluate", f"samples={root}/digits", "n=100", "tstr.n=0", "baseline=none",
         f"data.root={root}/datasets/mnist"],
    ]
    for argv in commands:
        assert main(argv) == 0, capfd.readouterr().err
    # A refused run, with a wrong secret: its error line names the problem, not the keys.
    wrong_secret = "wrong-" + os.urandom(12).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    storage.reset_client()
    assert main(["sample", f"generator={root}/run/generator.safetensors", "count=10", f"out={root}/other"]) == 2
    monkeypatch.undo()
    storage.reset_client()

    console = capfd.readouterr()
    outputs = every_object(s3_server, bucket)
    assert {"run/config.yaml", "run/metrics.jsonl", "digits/manifest.json", "datasets/mnist/manifest.json",
            "digits/eval/report.json"} <= set(outputs)
    assert any(k.endswith("/meta.json") for k in outputs)
    for secret in (s3_server.access_key, s3_server.secret_key, wrong_secret):
        assert secret not in console.out and secret not in console.err
        for key, data in outputs.items():
            assert secret.encode() not in data, f"{secret[:4]}... found in {key}"
    assert "access denied" in console.err

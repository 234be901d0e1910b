"""URIs: a scheme the job does not support, or a bucket name S3 would reject, is bad input
(one line, exit 2) found before anything is written or any request is sent."""

from __future__ import annotations

import pytest

from job import storage
from job.cli import main

UNSUPPORTED = [
    ["train", "--config", "debug", "run.dir=gs://bucket/run"],
    ["train", "--config", "debug", "run.dir=runs/x", "data.root=file:///data/mnist"],
    ["sample", "generator=gs://bucket/generator.safetensors", "out=digits", "count=10"],
    ["sample", "generator=http://host/generator.safetensors", "out=digits", "count=10"],
    ["evaluate", "generator=S3://bucket/generator.safetensors"],
    ["transform", "inputs=https://host/scan.png", "out=printed"],
    ["transform", "inputs=s3:/bucket/scans/", "out=printed"],
]


@pytest.mark.parametrize("args", UNSUPPORTED, ids=lambda a: a[-1] if "=" in a[-1] else a[1])
def test_an_unsupported_scheme_is_refused_naming_what_works_and_nothing_is_written(args, tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.chdir(tmp_path)  # a scheme taken for a local path would make a folder here
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a storage scheme this job reads or writes" in err[0], err
    assert storage.SUPPORTED in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab", "a..b", "192.168.1.1", "-bucket", "bucket-", "b" * 64])
def test_a_bucket_name_s3_would_reject_is_bad_input_before_any_request(bucket, tmp_path, monkeypatch, capsys):
    # The endpoint is dead: a request would end in exit 3 (retryable), never in 2.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "debug", f"run.dir=s3://{bucket}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a valid S3 bucket name" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_valid_bucket_names_and_local_paths_pass():
    for uri in ("s3://my-bucket/x", "s3://digits.data-2026/a/b", "s3://abc"):
        assert storage.is_remote(uri) and storage.split_s3(uri)[0]
    for path in ("runs/x", "/data/mnist", "./a:b", "builtin:mnist", "C:/not/a/scheme"):
        assert not storage.is_remote(path)

"""The built images, run the way Kubernetes runs their Jobs' pods (tests/podrunner.py):
rendered by scripts/submit.sh from k8s/overlays, started with podman, S3 a real SeaweedFS on
this machine's loopback, MNIST a mounted local folder.

    ./scripts/test-images.sh        # builds both images, then runs this file on each

Without DIGITS_TEST_IMAGES (set by that script) every test here is skipped: the default
suite does not build images. The CUDA image takes its CPU path here (no GPU), as on a CPU
node with the cpu overlay; with the gpu overlay it must refuse instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import boto3
import pytest

from conftest import REPO, SHARED_MNIST
from podrunner import Cluster, Pod, podman, run_flags

IMAGES = os.environ.get("DIGITS_TEST_IMAGES", "").split()
pytestmark = pytest.mark.skipif(not IMAGES, reason="needs the built images: run scripts/test-images.sh")
CUDA_IMAGE = "localhost/digit-job:dev"
MNIST = os.environ.get("DIGITS_DATA_DIR") or str(SHARED_MNIST)

# A tiny conditional dcgan28 (the debug preset's sizes) so that each pod runs in seconds.
TINY_MODEL = """model:
  kind: dcgan
  arch: dcgan28
  conditional: true
  latent_dim: 16
  g_width: 8
  d_width: 8
"""


def train_yaml(steps: int, log_every: int = 10, checkpoint_every: int = 1_000_000, **extra: str) -> str:
    lines = [f"  {k}: {v}" for k, v in extra.items()]
    return (f"seed: 0\nresume: auto\n{TINY_MODEL}train:\n  steps: {steps}\n  batch_size: 16\n"
            f"  log_every: {log_every}\n  sample_every: 1000000\n  checkpoint_every: {checkpoint_every}\n"
            f"  keep_checkpoints: 2\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module", params=IMAGES or ["none"])
def image(request) -> str:
    return request.param


@pytest.fixture
def s3(s3_server, bucket):
    """(boto3 client, bucket) for one test."""
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name=s3_server.region)
    return client, bucket


class Pods:
    """Starts pods and removes every one of them at the end of the test."""

    def __init__(self):
        self.started: list[Pod] = []

    def start(self, cluster: Cluster, job: dict, index: int | None = None, **kwargs) -> Pod:
        pod = cluster.start(job, index, **kwargs)
        self.started.append(pod)
        return pod

    def cleanup(self):
        for pod in self.started:
            pod.remove()


@pytest.fixture
def pods():
    p = Pods()
    yield p
    p.cleanup()


def render(image: str, overlay: str, job: str, run: str, bucket: str, s3_server,
           endpoint: str | None = None) -> Cluster:
    """What `scripts/submit.sh <overlay> <job> --image IMAGE ...` would apply, with the S3
    Secret a user creates from k8s/s3-secret.template.yaml."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "submit.sh"), overlay, job, "--image", image, "--run", run,
         "--s3-prefix", f"s3://{bucket}/digits", "--s3-endpoint", endpoint or s3_server.endpoint, "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "KUBECTL": kubectl()})
    assert proc.returncode == 0, proc.stderr
    cluster = Cluster.from_yaml(proc.stdout, secrets={"digit-job-s3": {
        "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}})
    # Fail fast on a dead endpoint (the shipped 8 attempts take minutes; a user may lower it too).
    [s3_map] = [o for o in cluster.objects
                if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("digit-job-s3")]
    s3_map["data"]["AWS_MAX_ATTEMPTS"] = "2"
    return cluster


def kubectl() -> str:
    from test_k8s import kubectl as find

    return find()


def keys(s3, prefix: str) -> list[str]:
    client, bucket = s3
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def read(s3, key: str) -> bytes:
    client, bucket = s3
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def metrics(s3, run: str) -> list[dict]:
    key = f"digits/runs/{run}/metrics.jsonl"
    if key not in keys(s3, key):
        return []
    return [json.loads(line) for line in read(s3, key).decode().splitlines() if line.strip()]


def wait_for(condition, timeout: float, what: str, pods: list[Pod] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for pod in pods:
            assert pod.running(), f"{pod.name} ended before {what}:\n{pod.logs()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error: ")]


def stage_mnist(image, s3, s3_server, pods: Pods, run: str) -> None:
    cluster = render(image, "cpu", "data", run, s3[1], s3_server)
    pod = pods.start(cluster, cluster.job("digit-data"), mounts={"data": MNIST})
    assert pod.wait(300) == 0, pod.logs()
    assert "digits/datasets/mnist/manifest.json" in keys(s3, "digits/datasets/mnist/")


def train_run(image, s3, s3_server, pods: Pods, run: str, config: str, **start) -> tuple[Cluster, Pod]:
    cluster = render(image, "cpu", "train", run, s3[1], s3_server)
    cluster.set_config_file("digit-job-config", "train.yaml", config)
    return cluster, pods.start(cluster, cluster.job("digit-train"), **start)


# ----------------------------------------------------------------------------- Jobs


def test_the_data_job_stages_mnist_the_train_job_writes_the_generator_and_the_evaluate_job_its_report(image, s3,
                                                                                                     s3_server, pods):
    stage_mnist(image, s3, s3_server, pods, "r1")
    _, pod = train_run(image, s3, s3_server, pods, "r1", train_yaml(steps=20, log_every=5, checkpoint_every=10))
    assert pod.wait(300) == 0, pod.logs()
    log = pod.logs()
    run = "digits/runs/r1/"
    stored = keys(s3, run)
    assert f"{run}checkpoints/step-00000020/meta.json" in stored and f"{run}generator.safetensors" in stored
    assert [m["step"] for m in metrics(s3, "r1")] == [5, 10, 15, 20]
    # The cpu overlay's CPU limit, not the node's cores, sizes the threads (limits.cpu 8, capped at
    # this machine's cores by podman's --cpus; the cgroup quota is what the job reads).
    threads = int(re.search(r"CPU, (\d+) threads", log).group(1))
    assert threads <= (os.cpu_count() or 1)
    assert "\r" not in log, "pod logs get plain lines, no carriage-return bar"

    # The evaluate Job scores that generator against the staged MNIST and writes its report.
    cluster = render(image, "cpu", "evaluate", "r1", s3[1], s3_server)
    cluster.set_config_file("digit-job-config", "evaluate.yaml", "n: 500\ntstr:\n  n: 500\n  epochs: 1\n")
    pod = pods.start(cluster, cluster.job("digit-evaluate"))
    assert pod.wait(600) == 0, pod.logs()[-3000:]
    report = json.loads(read(s3, "digits/runs/r1/eval/report.json"))
    assert report and "digits/runs/r1/eval/report.md" in keys(s3, "digits/runs/r1/eval/")


def test_a_bad_config_exits_2_and_a_dead_endpoint_exits_3_as_the_pods_exit_code(image, s3, s3_server, pods):
    _, pod = train_run(image, s3, s3_server, pods, "bad", train_yaml(steps=5).replace("steps:", "stepz:"))
    assert pod.wait(120) == 2
    [line] = error_lines(pod.logs())
    assert "stepz" in line
    assert keys(s3, "digits/runs/bad/") == [], "nothing written on bad input"

    dead = render(image, "cpu", "train", "dead", s3[1], s3_server, endpoint="http://127.0.0.1:9")
    dead.set_config_file("digit-job-config", "train.yaml", train_yaml(steps=5))
    pod = pods.start(dead, dead.job("digit-train"))
    assert pod.wait(180) == 3
    [line] = error_lines(pod.logs())
    assert "127.0.0.1:9" in line and "unreachable" in line


@pytest.mark.parametrize("processes", [1, 2])
def test_podman_stop_saves_a_checkpoint_and_the_same_pod_resumes_with_no_gap(image, s3, s3_server, pods, processes):
    stage_mnist(image, s3, s3_server, pods, f"stop{processes}")
    run = f"stop{processes}"
    steps = 1500
    env = {"DIGITS_NUM_PROCESSES": str(processes)}
    cluster, pod = train_run(image, s3, s3_server, pods, run, train_yaml(steps=steps), env=env)
    wait_for(lambda: len(metrics(s3, run)) >= 3, 240, "30 logged steps", [pod])
    assert pod.stop() == 143, pod.logs()  # SIGTERM, SIGKILL only after terminationGracePeriodSeconds
    log = pod.logs()
    stopped = re.search(r"stopped: SIGTERM at step (\d+): checkpoint saved to (\S+);", log)
    assert stopped, log[-3000:]
    step = int(stopped.group(1))
    assert f"digits/runs/{run}/checkpoints/step-{step:08d}/meta.json" in keys(s3, f"digits/runs/{run}/checkpoints/")
    if processes == 2:
        assert "process codes: 143 143" in log  # the launcher's 1 replaced by the job's own code

    again = pods.start(cluster, cluster.job("digit-train"), env=env)
    assert again.wait(600) == 0, again.logs()[-3000:]
    assert f"resuming from s3://{s3[1]}/digits/runs/{run}/checkpoints/step-{step:08d}" in again.logs()
    assert [m["step"] for m in metrics(s3, run)] == list(range(10, steps + 1, 10)), "each logged step once, no gap"
    world = json.loads(read(s3, f"digits/runs/{run}/world.json"))
    assert world["world_size"] == processes and world["ranks_identical"]


def multinode(image, s3, s3_server, run: str, steps: int) -> tuple[Cluster, dict, dict[str, str]]:
    cluster = render(image, "cpu", "train-multinode-job", run, s3[1], s3_server)
    cluster.set_config_file("digit-job-config", "train.yaml", train_yaml(steps=steps))
    job = cluster.job("digit-train-mn")
    name = job["metadata"]["name"]
    # What the headless Service gives pod 1: pod 0's DNS names, here this machine's loopback
    # (every pod is on the host network). Pod 0 gets no entry for its own Service name at all.
    return cluster, job, {f"{name}-0.{name}": "127.0.0.1", f"{name}-0": "127.0.0.1"}


def test_two_multi_node_pods_meet_through_c10d_and_train_identical_weights(image, s3, s3_server, pods):
    stage_mnist(image, s3, s3_server, pods, "mn")
    cluster, job, dns = multinode(image, s3, s3_server, "mn", steps=40)
    # Pod 1 first: it waits for pod 0's store. Pod 0 never resolves its own Service name.
    second = pods.start(cluster, job, 1, hosts=dns)
    time.sleep(3)
    first = pods.start(cluster, job, 0)
    assert first.wait(420) == 0, first.logs()[-3000:]
    assert second.wait(60) == 0, second.logs()[-3000:]
    world = json.loads(read(s3, "digits/runs/mn/world.json"))
    assert world["world_size"] == 2 and world["ranks_identical"]
    assert "is_host=1" in first.logs() and "is_host=0" in second.logs()


def test_a_killed_peer_makes_pod_0_exit_5_within_a_bounded_time_with_one_line(image, s3, s3_server, pods):
    stage_mnist(image, s3, s3_server, pods, "peer")
    cluster, job, dns = multinode(image, s3, s3_server, "peer", steps=100_000)
    first = pods.start(cluster, job, 0)
    second = pods.start(cluster, job, 1, hosts=dns)
    wait_for(lambda: len(metrics(s3, "peer")) >= 2, 300, "training on 2 nodes", [first, second])
    second.kill()
    killed = time.monotonic()
    assert first.wait(120) == 5, first.logs()[-3000:]
    assert time.monotonic() - killed < 120
    assert any("lost contact with another process" in line for line in error_lines(first.logs())), first.logs()[-2000:]


def test_sigterm_to_one_pod_of_a_multi_node_run_stops_both_with_codes_the_policy_ignores_and_a_rerun_resumes(
        image, s3, s3_server, pods):
    # What a spot reclaim of one node does: only that pod gets SIGTERM (and DisruptionTarget).
    stage_mnist(image, s3, s3_server, pods, "spot")
    steps = 400
    cluster, job, dns = multinode(image, s3, s3_server, "spot", steps=steps)
    first = pods.start(cluster, job, 0)
    second = pods.start(cluster, job, 1, hosts=dns)
    wait_for(lambda: len(metrics(s3, "spot")) >= 2, 300, "training on 2 nodes", [first, second])
    codes = [second.stop(), first.wait(180)]
    # The Indexed Job's podFailurePolicy (and the JobSet's child Jobs') ignores both codes.
    ignored = {r for rule in job["spec"]["podFailurePolicy"]["rules"] if rule["action"] == "Ignore"
               for r in rule.get("onExitCodes", {}).get("values", [])}
    assert set(codes) <= ignored, (codes, first.logs()[-2000:], second.logs()[-2000:])
    checkpoints = [k for k in keys(s3, "digits/runs/spot/checkpoints/") if k.endswith("meta.json")]
    assert checkpoints, "a complete checkpoint before the pods went"
    # The Job recreates both pods: they meet again and resume from that checkpoint.
    again = [pods.start(cluster, job, 1, hosts=dns), pods.start(cluster, job, 0)]
    assert again[1].wait(600) == 0, again[1].logs()[-3000:]
    assert again[0].wait(60) == 0, again[0].logs()[-3000:]
    assert "resuming from" in again[1].logs()
    assert [m["step"] for m in metrics(s3, "spot")] == list(range(10, steps + 1, 10)), "each logged step once"


def test_a_cpu_limit_of_one_gives_the_job_one_thread(image, s3, s3_server, pods):
    stage_mnist(image, s3, s3_server, pods, "one")
    cluster = render(image, "cpu", "train", "one", s3[1], s3_server)
    cluster.set_config_file("digit-job-config", "train.yaml", train_yaml(steps=2, log_every=1))
    job = cluster.job("digit-train")
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "1"
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1"
    pod = pods.start(cluster, job)
    assert pod.wait(300) == 0, pod.logs()[-3000:]
    # The default limit (8, capped at this machine's cores) gives more where there are cores to
    # give (test_the_data_job_...): this can fail.
    assert re.search(r"CPU, 1 threads", pod.logs()), pod.logs()[-2000:]


def test_the_sampling_indexed_job_survives_a_killed_index_and_writes_every_shard_once(image, s3, s3_server, pods):
    stage_mnist(image, s3, s3_server, pods, "smp")
    _, trained = train_run(image, s3, s3_server, pods, "smp", train_yaml(steps=10, log_every=5))
    assert trained.wait(300) == 0, trained.logs()
    cluster = render(image, "cpu", "sample", "smp", s3[1], s3_server)
    job = cluster.job("digit-sample")
    workers = job["spec"]["completions"]
    count, shard_size = 120_000, 3000
    cluster.set_config_file("digit-job-config", "sample.yaml",
                            f"count: {count}\nshard_size: {shard_size}\nformat: safetensors\nlabels: balanced\n"
                            f"seed: 0\nbatch_size: 1000\nworkers: {workers}\nprogress: false\n")
    running = {i: pods.start(cluster, job, i) for i in range(workers)}
    records = "digits/samples/smp/_records/"
    victim = 2

    def victim_mid_way():
        done = [k for k in keys(s3, records) if re.search(r"shard-(\d+)\.json$", k)
                and int(re.search(r"shard-(\d+)\.json$", k).group(1)) % workers == victim]
        return 1 <= len(done) < count // shard_size // workers
    wait_for(victim_mid_way, 300, f"index {victim} to be part-way through its shards", [running[victim]])
    running[victim].kill()
    assert running[victim].wait(30) == 137
    running[victim] = pods.start(cluster, job, victim)  # the Job controller's retry of that index
    for index, pod in running.items():
        assert pod.wait(600) == 0, f"index {index}:\n{pod.logs()[-3000:]}"
    assert "already done" in running[victim].logs()

    manifest = json.loads(read(s3, "digits/samples/smp/manifest.json"))
    assert manifest["count"] == count and manifest["num_shards"] == count // shard_size
    assert [r["index"] for r in manifest["shards"]] == list(range(count // shard_size)), "every shard once"
    import hashlib

    for record in manifest["shards"]:
        for name, entry in record["files"].items():
            assert hashlib.sha256(read(s3, f"digits/samples/smp/{name}")).hexdigest() == entry["sha256"]
    shard_files = [k for k in keys(s3, "digits/samples/smp/") if k.endswith(".safetensors")]
    assert len(shard_files) == count // shard_size


# ----------------------------------------------------------------------------- the image itself


def test_the_image_with_no_arguments_completes_its_default_command_and_writes_only_to_the_pod_volumes(image):
    """`podman run IMAGE` with MNIST mounted: the default command (the quickstart training)
    completes; then `podman diff` on that container (no --read-only this time) shows no
    change outside /tmp and /cache, the folders a pod mounts emptyDirs on."""
    # 2000 steps of quickstart: 6.5 minutes one day, over 12 on a slower 2-core CPU.
    name = f"default-{os.urandom(3).hex()}"
    run = subprocess.run(podman() + ["run", *run_flags(), "--name", name, "--volume", f"{MNIST}:/data:ro", image],
                         capture_output=True, text=True, timeout=1800)
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "digit-job train: done at step 2000" in run.stdout
        diff = subprocess.run(podman() + ["diff", name], capture_output=True, text=True, check=True).stdout
        changed = [line.split(None, 1)[1] for line in diff.splitlines() if line.strip()]
        # What the engine itself puts in every container (a kubelet mounts the same files)
        # is not the job's: /run/.containerenv, /etc/hosts, /etc/hostname, /etc/resolv.conf.
        engine = re.compile(r"^(/run|/run/\.containerenv|/etc|/etc/(hosts|hostname|resolv\.conf))$")
        outside = [p for p in changed if not re.match(r"^/(tmp|cache)(/|$)", p) and not engine.match(p)]
        assert any(p.startswith("/tmp/runs/quickstart") for p in changed) and not outside, outside
    finally:
        subprocess.run(podman() + ["rm", "--force", name], capture_output=True)


FAILING_NVIDIA_SMI = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""


@pytest.mark.parametrize("nvidia_smi", ["missing", "failing"])
def test_a_gpu_overlay_pod_without_a_working_nvidia_smi_exits_4_instead_of_training_on_cpu(image, s3, s3_server, pods,
                                                                                           nvidia_smi, tmp_path):
    if image != CUDA_IMAGE:
        pytest.skip("the gpu overlay runs the CUDA image")
    cluster = render(image, "gpu", "train", "nogpu", s3[1], s3_server)
    cluster.set_config_file("digit-job-config", "train.yaml", train_yaml(steps=5))
    extra = {}
    if nvidia_smi == "failing":
        tool = tmp_path / "nvidia-smi"
        tool.write_text(FAILING_NVIDIA_SMI)
        tool.chmod(0o755)
        extra = {"binds": [f"{tool}:/usr/local/bin/nvidia-smi:ro"]}
    pod = pods.start(cluster, cluster.job("digit-train"), **extra)
    assert pod.wait(120) == 4, pod.logs()
    [line] = error_lines(pod.logs())
    assert "DIGITS_REQUIRE_GPU=1" in line
    assert ("couldn't communicate with the NVIDIA driver" in line) == (nvidia_smi == "failing")
    assert keys(s3, "digits/runs/nogpu/") == []


def test_a_code_edit_rebuilds_only_the_code_layers(image, tmp_path):
    """The build cache at work: the same Dockerfile over a copy of the context whose job/
    differs by one comment reuses every dependency layer (the torch layer above all)."""
    context = tmp_path / "context"
    for item in ["pyproject.toml", "README.md", ".dockerignore"]:
        (context / item).parent.mkdir(parents=True, exist_ok=True)
        (context / item).write_bytes((REPO / item).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "job"), str(REPO / "docker"), str(context)], check=True)
    (context / "job" / "__init__.py").write_text((REPO / "job" / "__init__.py").read_text() + "# edited\n")
    dockerfile = "docker/Dockerfile" if image == CUDA_IMAGE else "docker/Dockerfile.cpu"
    base = subprocess.run(podman() + ["image", "inspect", "--format", "{{index .Labels \"digit-job.standin\"}}", image],
                          capture_output=True, text=True).stdout.strip()
    assert base, "scripts/test-images.sh labels each image with the stand-in base it was built from"
    tag = f"localhost/digit-job:edit-{os.urandom(3).hex()}"
    build_args = os.environ.get("DIGITS_CPU_BUILD_ARGS", "").split() if image != CUDA_IMAGE else []
    build = subprocess.run(podman() + ["build", *run_flags(), "--network", "host", "--from", base, "--label",
                                       f"digit-job.standin={base}", *build_args,
                                       "-f", dockerfile, "-t", tag, str(context)],
                           capture_output=True, text=True, timeout=900)
    try:
        assert build.returncode == 0, build.stderr[-3000:]
        steps = re.split(r"^STEP \d+/\d+: ", build.stdout, flags=re.M)[1:]
        pip_step = next(s for s in steps if "requirements.lock" in s and s.startswith("RUN"))
        assert "--> Using cache" in pip_step, pip_step
        copy_job = next(s for s in steps if s.startswith("COPY job"))
        assert "--> Using cache" not in copy_job
    finally:
        subprocess.run(podman() + ["rmi", "--force", tag], capture_output=True)

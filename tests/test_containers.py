"""The images: hadolint at the warning threshold, what it does not check, and the
entrypoint's launch command for 0, 1 and 4 GPUs (printed, not run), and its exit codes
(run). tests/test_images.py runs the built images (scripts/test-images.sh)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def hadolint() -> str:
    return str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_at_the_warning_threshold(dockerfile):
    proc = subprocess.run([hadolint(), "--failure-threshold", "warning", str(dockerfile)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_pinned_non_root_built_from_the_pyproject_and_carry_no_secrets(dockerfile):
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))  # FROM ${ARG}: its default
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], b)
             for b in re.findall(r"^FROM\s+(\S+)", text, re.M)]
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert re.search(r"pip install [^\n]*\s\.\s*(\\|&&|$)", text, re.M), "installs the project from pyproject.toml"
    assert "COPY pyproject.toml" in text
    assert not re.search(r"(AWS_SECRET|AWS_ACCESS_KEY|PASSWORD|TOKEN)\s*=", text), "no credentials in the image"
    # tini forwards signals to the entrypoint; with -g the launcher died at once and took
    # the worker with it before its checkpoint (see docker/entrypoint.sh).
    assert '["tini", "--", "/app/docker/entrypoint.sh"]' in text and '"-g"' not in text
    assert "org.opencontainers.image.source" in text or "org.opencontainers.image.title" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_installed_from_the_locks_before_the_code_is_copied(dockerfile):
    lines = dockerfile.read_text().splitlines()
    locks = next(i for i, line in enumerate(lines) if "pip install" in line and "requirements.lock" in line)
    code = next(i for i, line in enumerate(lines) if line.startswith("COPY job"))
    assert locks < code, "a code edit must not rebuild the torch layer"
    assert any("--no-deps" in line for line in lines[code:]), "the code layer installs no dependency"
    commands = [line for line in lines if not line.lstrip().startswith("#")]
    assert not any("--extra-index-url" in line for line in commands), "no second index may win over the pinned one"


def test_both_images_have_the_same_python_base_and_writable_cache_and_data_folders():
    texts = [d.read_text() for d in DOCKERFILES]
    assert all("ubuntu24.04" in t or "ubuntu:24.04" in t for t in texts)  # the same Python 3.12
    assert all("chown 10001:10001 /cache /data" in t for t in texts)


def test_the_locks_pin_every_package_exactly():
    for lock in ["requirements.lock", "requirements-cuda13.lock", "requirements-cuda12.lock"]:
        pins = [line for line in (REPO / "docker" / lock).read_text().splitlines() if line and not line.startswith("#")]
        assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^\s=]+", p) for p in pins), pins


def test_the_build_context_leaves_out_the_venv_runs_and_data():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny everything by default, then allow what the image needs
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert set(allowed) == {"pyproject.toml", "README.md", "job/", "docker/entrypoint.sh", "docker/requirements.lock",
                            "docker/requirements-cuda13.lock", "docker/requirements-cuda12.lock"}


# The entrypoint runs `python -m job.core.cpu_budget`: the venv's python, the repository's job.
PATH_WITH_VENV = f"{Path(sys.executable).parent}:{os.environ['PATH']}"


def entrypoint(gpus: int, *args: str, **env: str) -> str:
    full_env = {**os.environ, "PATH": PATH_WITH_VENV, "DIGITS_GPU_COUNT": str(gpus), "DIGITS_DRY_RUN": "1", **env}
    proc = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full_env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_no_gpu_runs_one_cpu_process_directly_with_no_launcher_in_between():
    # No launcher between tini and the process that saves: it gets SIGTERM itself, and its
    # exit code is the container's.
    assert entrypoint(0, "train", "--config", "quickstart") == "python -m job train --config quickstart"


def test_one_gpu_runs_one_process_directly_and_leaves_precision_to_the_job():
    # The job's auto picks bf16 only where the GPU computes it natively.
    assert entrypoint(1, "train", "--config", "quickstart") == "python -m job train --config quickstart"


def test_the_entrypoint_leaves_digits_precision_to_the_job():
    # The job reads DIGITS_PRECISION itself (tests/test_precision.py), in the image or not.
    assert entrypoint(1, "train", DIGITS_PRECISION="fp16") == "python -m job train"
    assert entrypoint(0, "sample", "precision=fp32", DIGITS_PRECISION="bf16") == "python -m job sample precision=fp32"


def test_several_cpu_processes_share_the_containers_threads():
    command = entrypoint(0, "train", DIGITS_NUM_PROCESSES="2", OMP_NUM_THREADS="6")
    budget = min(6, len(os.sched_getaffinity(0)))  # no more threads than this machine's cores
    per_process = max(1, budget // 2)
    assert f"--num_cpu_threads_per_process {per_process} --multi_gpu --num_machines 1 --num_processes 2" in command


def test_four_gpus_run_four_ddp_processes_and_keep_an_explicit_precision():
    command = entrypoint(4, "train", "--config", "quickstart", "train.precision=fp16")
    assert "--multi_gpu --num_machines 1 --num_processes 4" in command
    assert command.endswith("-m job train --config quickstart train.precision=fp16")
    assert "bf16" not in command.split("-m job")[1]


def test_sampling_passes_its_arguments_through_untouched():
    command = entrypoint(4, "sample", "generator=s3://b/g.safetensors", "count=100", "out=s3://b/out")
    assert command.endswith("-m job sample generator=s3://b/g.safetensors count=100 out=s3://b/out")


def test_multi_node_uses_the_job_index_and_a_c10d_rendezvous():
    command = entrypoint(4, "train", NNODES="2", JOB_COMPLETION_INDEX="1", MASTER_ADDR="trainer-0.trainer")
    assert "--num_machines 2 --machine_rank 1 --num_processes 8" in command
    assert ("--main_process_ip trainer-0.trainer --main_process_port 29500 --rdzv_backend c10d "
            "--rdzv_conf is_host=0,read_timeout=600,join_timeout=1800") in command


def test_node_0_hosts_the_rendezvous_on_its_own_loopback_without_resolving_its_name():
    command = entrypoint(4, "train", NNODES="2", JOB_COMPLETION_INDEX="0", MASTER_ADDR="trainer-0.trainer")
    assert "--machine_rank 0" in command and "--main_process_ip 127.0.0.1" in command and "is_host=1" in command


def test_a_bad_gpu_count_is_refused():
    proc = subprocess.run(["bash", str(ENTRYPOINT), "train"], capture_output=True, text=True,
                          env={**os.environ, "PATH": PATH_WITH_VENV, "DIGITS_GPU_COUNT": "four", "DIGITS_DRY_RUN": "1"})
    assert proc.returncode == 2 and "DIGITS_GPU_COUNT=four is not a number" in proc.stderr


def test_cpu_nodes_of_a_multi_node_job_run_one_gloo_process_each():
    command = entrypoint(0, "train", NNODES="3", JOB_COMPLETION_INDEX="2", MASTER_ADDR="trainer-0.trainer")
    assert "--num_machines 3 --machine_rank 2 --num_processes 3" in command and "--cpu" not in command
    assert command.endswith("-m job train")


def test_a_bad_node_count_is_refused():
    proc = subprocess.run(["bash", str(ENTRYPOINT), "train"], capture_output=True, text=True,
                          env={**os.environ, "PATH": PATH_WITH_VENV, "DIGITS_GPU_COUNT": "0", "NNODES": "two",
                               "DIGITS_DRY_RUN": "1"})
    assert proc.returncode == 2 and "NNODES=two is not a positive number" in proc.stderr


def test_two_cpu_nodes_meet_through_the_entrypoint_and_train_as_one(tmp_path):
    """What the multi-node Indexed Job does, on 127.0.0.1: two entrypoints, ranks 0 and 1,
    a real c10d rendezvous and a 2-process gloo run that writes one run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": PATH_WITH_VENV, "DIGITS_GPU_COUNT": "0",
           "NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    def start(rank: int) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(ENTRYPOINT), "train", "--config", "debug", f"run.dir={run_dir}"],
                                cwd=REPO, env={**env, "JOB_COMPLETION_INDEX": str(rank)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    # On one host both nodes' addresses are "this machine", so either could host the c10d
    # store; in a cluster only pod 0 owns MASTER_ADDR. Start node 1 once node 0 listens.
    nodes = [start(0)]
    deadline = time.monotonic() + 120
    while nodes[0].poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    nodes.append(start(1))
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    world = json.loads((run_dir / "world.json").read_text())
    assert world["world_size"] == 2 and world["ranks_identical"]
    assert (run_dir / "generator.safetensors").exists()


@pytest.mark.slow
def test_node_1_waits_for_a_node_0_that_starts_90_s_late_and_both_train(tmp_path):
    """A pulled image or a scaled-up node can start pod 0 minutes after the others. Node 1
    starts first and waits for node 0's c10d store (DIGITS_RDZV_READ_TIMEOUT, 600 s by
    default; torch's own read_timeout is 60 s): 90 s later node 0 starts and both train.
    Slow (about 2 minutes): run with -m slow."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": PATH_WITH_VENV, "DIGITS_GPU_COUNT": "0", "NNODES": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    def start(rank: int) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(ENTRYPOINT), "train", "--config", "debug", "train.steps=4",
                                 f"run.dir={run_dir}"], cwd=REPO, env={**env, "NODE_RANK": str(rank)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    second = start(1)
    time.sleep(90)
    first = start(0)
    try:
        outputs = [node.communicate(timeout=300)[0] for node in (first, second)]
    finally:
        for node in (first, second):
            node.kill()
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert json.loads((run_dir / "world.json").read_text())["world_size"] == 2


def run_entrypoint(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "PATH": PATH_WITH_VENV, **env})


def test_bad_input_through_a_two_process_launch_exits_2_not_the_launchers_1(tmp_path):
    proc = run_entrypoint("train", "--config", "debug", "train.stepz=3", f"run.dir={tmp_path / 'run'}",
                          DIGITS_GPU_COUNT="0", DIGITS_NUM_PROCESSES="2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "launcher exited 1; process codes: 2 2 -> exit 2" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_pod_that_requires_a_gpu_and_has_no_nvidia_smi_exits_4(tmp_path):
    bare_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no nvidia-smi on it
    proc = subprocess.run(["bash", str(ENTRYPOINT), "train", "--config", "debug", f"run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PATH": bare_path, "DIGITS_REQUIRE_GPU": "1"})
    assert proc.returncode == 4
    assert proc.stderr.startswith("error: DIGITS_REQUIRE_GPU=1") and "nvidia-smi is not in the container" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_failing_nvidia_smi_is_named_in_the_error_and_without_the_requirement_it_falls_back_to_cpu(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    (tools / "nvidia-smi").chmod(0o755)
    path = f"{tools}:{PATH_WITH_VENV}"
    required = subprocess.run(["bash", str(ENTRYPOINT), "train"], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PATH": path, "DIGITS_REQUIRE_GPU": "1"})
    assert required.returncode == 4 and "nvidia-smi failed: NVIDIA-SMI has failed: no driver" in required.stderr
    fallback = subprocess.run(["bash", str(ENTRYPOINT), "train", "--config", "quickstart"], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "PATH": path, "DIGITS_DRY_RUN": "1"})
    assert fallback.returncode == 0 and fallback.stdout.strip() == "python -m job train --config quickstart"


def test_the_cpu_budget_is_the_cgroup_quota_not_the_hosts_cores(tmp_path, monkeypatch):
    from job.core import cpu_budget

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # cgroup v2: 2.5 CPUs
    assert cpu_budget.available(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_budget.available(tmp_path) == 64
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_budget.available(v1) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # Kubernetes: from limits.cpu
    assert cpu_budget.available(v1) == 3

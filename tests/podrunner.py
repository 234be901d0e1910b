"""Run a rendered Kubernetes Job's pods with podman, the way a kubelet would run them.

No cluster here, so this does the part of a kubelet that decides what a container sees:

- image, command and args, with `$(VAR)` expanded from the container's environment;
- env: `envFrom` ConfigMaps and Secrets from the render (an optional Secret may be absent),
  `env` in order (value, fieldRef on the pod's name/namespace/labels/annotations,
  resourceFieldRef on limits/requests, configMapKeyRef, secretKeyRef), and for an Indexed
  Job `JOB_COMPLETION_INDEX`, the completion-index label/annotation and the pod hostname
  `<job>-<index>`; the pod's own hostname and FQDN in its /etc/hosts, as the kubelet
  writes them (the Service's DNS names for other pods are the caller's `hosts`);
- volumes: emptyDir as a tmpfs of its sizeLimit owned by the pod's user (fsGroup), a
  Memory emptyDir on /dev/shm as the shm size, ConfigMaps as read-only files;
- securityContext: user and group, runAsNonRoot (refused if root), read-only root (and none
  of podman's own tmpfs on /tmp, /run: Kubernetes adds none), dropped capabilities,
  no-new-privileges, the default seccomp profile;
- CPU and memory limits (CPU capped at this machine's cores, which podman requires), and
  terminationGracePeriodSeconds as the stop timeout (SIGTERM, then SIGKILL).

What differs on purpose, each named by the caller: the host network (S3 is a SeaweedFS on
this machine's loopback), `/etc/hosts` entries in place of cluster DNS, and a local folder
mounted over a volume where the cluster would download (nothing downloads here).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def podman() -> list[str]:
    """The podman command with this machine's settings (scripts/test-images.sh exports them)."""
    return shlex.split(os.environ.get("DIGITS_PODMAN", "podman"))


def run_flags() -> list[str]:
    """Flags every `podman run` here needs (ulimits within the host's hard limits)."""
    return shlex.split(os.environ.get("DIGITS_PODMAN_RUN_FLAGS", ""))


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi", "1.5") as a number (CPUs or bytes)."""
    text = str(text)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, others stay as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


@dataclass
class Pod:
    """A started pod: its container name, the Job it belongs to and its grace period."""

    name: str
    grace_s: int
    command: list[str]
    volumes_dir: Path

    def wait(self, timeout: float) -> int:
        """The container's exit code, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
            time.sleep(0.5)
        raise TimeoutError(f"pod {self.name} still running after {timeout} s:\n{self.logs()[-3000:]}")

    def state(self) -> dict:
        out = subprocess.run(podman() + ["inspect", "--format", "{{json .State}}", self.name], capture_output=True,
                             text=True, check=True).stdout
        return json.loads(out)

    def running(self) -> bool:
        return self.state()["Status"] == "running"

    def logs(self) -> str:
        return subprocess.run(podman() + ["logs", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout

    def stop(self) -> int:
        """What the kubelet does to a pod being deleted or preempted: SIGTERM, then SIGKILL
        after terminationGracePeriodSeconds. Returns the exit code."""
        subprocess.run(podman() + ["stop", "--time", str(self.grace_s), self.name], capture_output=True, check=True)
        return int(self.state()["ExitCode"])

    def kill(self) -> None:
        """A node lost or an OOM kill: SIGKILL, no grace."""
        subprocess.run(podman() + ["kill", "--signal", "KILL", self.name], capture_output=True)

    def diff(self) -> list[str]:
        """Paths the container changed in its own filesystem layer (`podman diff`)."""
        out = subprocess.run(podman() + ["diff", self.name], capture_output=True, text=True, check=True).stdout
        return [line.split(None, 1)[1] for line in out.splitlines() if line.strip()]

    def remove(self) -> None:
        subprocess.run(podman() + ["rm", "--force", "--time", "0", self.name], capture_output=True)


@dataclass
class Cluster:
    """The objects of one render (`kubectl kustomize` or `scripts/submit.sh --dry-run`) plus
    what a cluster would add: Secrets created by hand, node DNS, mounted local folders."""

    objects: list[dict]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    namespace: str = "default"
    host_cpus: int = os.cpu_count() or 1

    @classmethod
    def from_yaml(cls, text: str, **kwargs) -> Cluster:
        return cls([o for o in yaml.safe_load_all(text) if o], **kwargs)

    def job(self, prefix: str) -> dict:
        [found] = [o for o in self.objects if o["kind"] == "Job" and o["metadata"]["name"].startswith(prefix)]
        return found

    def config_map(self, name: str) -> dict[str, str] | None:
        for o in self.objects:
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name:
                return dict(o.get("data", {}))
        return None

    def set_config_file(self, name_prefix: str, key: str, text: str) -> None:
        """Edit one file of a ConfigMap, as a user edits k8s/base/job-config/ before applying."""
        [cm] = [o for o in self.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(name_prefix)]
        cm.setdefault("data", {})[key] = text

    # ------------------------------------------------------------------ env

    def _env(self, pod_meta: dict, container: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self.config_map(ref["name"])
                if data is None and not ref.get("optional"):
                    raise LookupError(f"ConfigMap {ref['name']} is not in the render")
            else:
                ref = source["secretRef"]
                data = self.secrets.get(ref["name"])
                if data is None and not ref.get("optional"):
                    raise LookupError(f"Secret {ref['name']} does not exist")
            env.update({source.get("prefix", "") + k: str(v) for k, v in (data or {}).items()})
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = self._field(pod_meta, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                kind, resource = ref["resource"].split(".", 1)
                amount = quantity(container.get("resources", {}).get(kind, {}).get(resource, self.host_cpus))
                env[var["name"]] = str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
            elif "configMapKeyRef" in source:
                env[var["name"]] = self.config_map(source["configMapKeyRef"]["name"])[source["configMapKeyRef"]["key"]]
            else:
                env[var["name"]] = self.secrets[source["secretKeyRef"]["name"]][source["secretKeyRef"]["key"]]
        return env

    def _field(self, meta: dict, path: str) -> str:
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return meta[m.group(1)][m.group(2)]
        return {"metadata.name": meta["name"], "metadata.namespace": self.namespace,
                "status.podIP": "127.0.0.1", "spec.nodeName": "podman"}[path]

    # ------------------------------------------------------------------ pods

    def start(self, job: dict, index: int | None = None, *, env: dict[str, str] | None = None,
              mounts: dict[str, str] | None = None, hosts: dict[str, str] | None = None,
              read_only: bool | None = None, name: str | None = None, args: list[str] | None = None,
              binds: list[str] = ()) -> Pod:
        """Start one pod of `job` (completion `index` for an Indexed Job), detached.

        env: variables a user added to the manifest; mounts: volume name -> local folder
        mounted in place of that volume; hosts: DNS names -> addresses (/etc/hosts);
        read_only: override the container's readOnlyRootFilesystem (for `podman diff`);
        args: replace the container's args (`kubectl debug`-style); binds: extra
        `src:dst[:ro]` bind mounts (what a node's runtime would put there, e.g. nvidia-smi)."""
        spec = job["spec"]
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        job_name = job["metadata"]["name"]
        indexed = spec.get("completionMode") == "Indexed"
        hostname = f"{job_name}-{index}" if indexed else job_name
        pod_name = name or f"{hostname}-{os.urandom(3).hex()}"
        labels = {**spec["template"].get("metadata", {}).get("labels", {}),
                  "batch.kubernetes.io/job-name": job_name, "job-name": job_name}
        annotations = dict(spec["template"].get("metadata", {}).get("annotations", {}))
        if indexed:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        meta = {"name": pod_name, "labels": labels, "annotations": annotations}

        variables = self._env(meta, container)
        if indexed:
            variables["JOB_COMPLETION_INDEX"] = str(index)
        variables.update(env or {})

        pod_security = pod.get("securityContext", {})
        security = container.get("securityContext", {})
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        group = security.get("runAsGroup", pod_security.get("runAsGroup"))
        if (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))) and user in (None, 0):
            raise PermissionError(f"{job_name}: runAsNonRoot without a non-root runAsUser")
        cmd = podman() + ["run", *run_flags(), "--detach", "--name", pod_name, "--network", "host",
                          "--hostname", hostname]
        if user is not None:
            cmd += ["--user", f"{user}:{group if group is not None else user}"]
        if pod_security.get("fsGroup") is not None:
            cmd += ["--group-add", str(pod_security["fsGroup"])]
        ro = security.get("readOnlyRootFilesystem", False) if read_only is None else read_only
        if ro:
            cmd += ["--read-only", "--read-only-tmpfs=false"]
        for cap in security.get("capabilities", {}).get("drop", []):
            cmd += ["--cap-drop", cap]
        for cap in security.get("capabilities", {}).get("add", []):
            cmd += ["--cap-add", cap]
        if security.get("allowPrivilegeEscalation") is False:
            cmd += ["--security-opt", "no-new-privileges"]
        limits = container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            cmd += ["--cpus", str(min(quantity(limits["cpu"]), self.host_cpus))]
        if "memory" in limits:
            cmd += ["--memory", str(int(quantity(limits["memory"])))]
        grace = int(pod.get("terminationGracePeriodSeconds", 30))
        cmd += ["--stop-timeout", str(grace)]
        # The kubelet writes the pod's own names into its /etc/hosts (no DNS needed for them);
        # the pod's IP is this machine's loopback on the host network.
        own = [hostname] + ([f"{hostname}.{pod['subdomain']}.{self.namespace}.svc.cluster.local"]
                            if pod.get("subdomain") else [])
        for host, address in {**{name: "127.0.0.1" for name in own}, **(hosts or {})}.items():
            cmd += ["--add-host", f"{host}:{address}"]

        volumes_dir = Path(tempfile.mkdtemp(prefix=f"pod-{pod_name}-"))
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            cmd += self._mount(volumes[mount["name"]], mount, (mounts or {}).get(mount["name"]), volumes_dir)
        for bind in binds:
            cmd += ["--volume", bind]
        for key, value in variables.items():
            cmd += ["--env", f"{key}={value}"]
        if container.get("command"):
            cmd += ["--entrypoint", json.dumps([expand(c, variables) for c in container["command"]])]
        cmd.append(container["image"])
        cmd += [expand(a, variables) for a in (args if args is not None else container.get("args", []))]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return Pod(pod_name, grace, cmd, volumes_dir)

    def _mount(self, volume: dict, mount: dict, local: str | None, scratch: Path) -> list[str]:
        path = mount["mountPath"]
        ro = ",ro" if mount.get("readOnly") else ""
        if local is not None:
            return ["--volume", f"{local}:{path}{ro or ''}"]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            if path == "/dev/shm":
                return ["--shm-size", str(int(quantity(size))) if size else "64m"]
            options = "rw,U" + (f",size={int(quantity(size))}" if size else "")  # U: owned by the pod's user
            return ["--tmpfs", f"{path}:{options}"]
        if "configMap" in volume:
            data = self.config_map(volume["configMap"]["name"])
            if data is None:
                raise LookupError(f"ConfigMap {volume['configMap']['name']} is not in the render")
            folder = scratch / volume["configMap"]["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                (folder / key).write_text(text)
                (folder / key).chmod(0o644)
            folder.chmod(0o755)
            return ["--volume", f"{folder}:{path}:ro"]
        raise NotImplementedError(f"volume {volume['name']}: only emptyDir and configMap are used by these Jobs")

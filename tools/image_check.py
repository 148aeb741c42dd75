"""`make image-check`: builds deploy/image/Dockerfile with podman and starts a
service (billing, against the machine's PostgreSQL) from the image, then asks
its gRPC health. Where no registry serves the pinned base, a bookworm base with
python3 is made locally with debootstrap (Debian's mirrors) and used instead.

Measured on this machine kind: podman 4.3 builds with `--isolation chroot`;
running a container through crun fails (setrlimit is not permitted here), so
the service is started with `buildah run --isolation chroot`."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
TAG = "localhost/iclaim:check"
LOCAL_BASE = "localhost/bookworm-python:3.11"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=True, text=True, **kw)  # type: ignore[call-overload]


def local_base() -> str:
    if subprocess.run(["podman", "image", "exists", LOCAL_BASE]).returncode == 0:
        return LOCAL_BASE
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        sh(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        )
        (rootfs / "usr/bin/python").symlink_to("python3")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh("podman", "import", "-", LOCAL_BASE, stdin=tar.stdout)
        tar.wait()
    return LOCAL_BASE


def build() -> None:
    extra = ROOT / "deploy/image/extra-ca/host.crt"
    if HOST_CA.exists():  # a TLS-inspecting proxy's CA, if the host trusts one
        shutil.copyfile(HOST_CA, extra)
    try:
        sh(
            "podman",
            "build",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "-f",
            "deploy/image/Dockerfile",
            "--build-arg",
            f"PYTHON_IMAGE={local_base()}",
            "-t",
            TAG,
            ".",
            cwd=ROOT,
        )
    finally:
        extra.unlink(missing_ok=True)


async def serving(port: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


def run_billing() -> None:
    import asyncpg  # the hub's own dependency, for a scratch database

    db = f"iclaim_image_{os.getpid()}"
    admin = os.environ.get("ICLAIM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def exec_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(exec_sql(f'CREATE DATABASE "{db}"'))
    ctr = subprocess.run(["buildah", "from", TAG], check=True, capture_output=True, text=True).stdout.strip()
    port = 50981
    env = {
        "ICLAIM_DATABASE_URL": admin.rpartition("/")[0] + f"/{db}",
        "ICLAIM_BILLING_ADDR": f"127.0.0.1:{port}",
        "ICLAIM_BILLING_METRICS_PORT": "-1",
        "ICLAIM_ROUTER_TARGET": "127.0.0.1:1",
    }
    args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    proc = subprocess.Popen([*args, ctr, "--", "python", "-m", "services.billing"])
    try:
        status = asyncio.run(serving(port, 90))
        uid = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", ctr, "--", "id", "-u"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"image-check: billing from {TAG} answers health {status}, runs as uid {uid}")
        if status != "SERVING" or uid != "10001":
            sys.exit(1)
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        asyncio.run(exec_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    for tool in ("podman", "buildah"):
        if shutil.which(tool) is None:
            sys.exit(f"image-check: {tool} is not installed (apt-get install podman buildah)")
    build()
    run_billing()


if __name__ == "__main__":
    main()

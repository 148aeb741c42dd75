"""`make run`'s participant portals (portal/, issue 12): one for the first dev
hospital and one for TESTPULL, on loopback, each its own process with its own
database, holding that participant's dev keys like an HIS would. Started only
when the `iclaim-portal` distribution is installed; never imported here."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from iclaim_ops.devstack import tied
from iclaim_ops.devstack.infra import ensure_database

HOSPITAL_PORT = 8601
INSURER_PORT = 8602
PULL_INSURER = "TESTPULL"
DEV_USER = "admin"
START_TIMEOUT_S = 30.0


@dataclass
class Portals:
    urls: dict[str, str] = field(default_factory=dict)  # participant code -> URL
    password: str = ""
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def describe(self) -> str:
        if not self.urls:
            return "portals not installed (pip install -e ./portal)"
        listed = ", ".join(f"{code} {url}" for code, url in self.urls.items())
        return f"portals {listed} (sign in {DEV_USER} / {self.password})"

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def portal_database(prefix: str, code: str) -> str:
    return f"{prefix}_{code.lower()}"


def _dev_password(state_dir: Path) -> str:
    """Made at the first run and kept (0600) so the portals' admin, created once
    per database, keeps signing in with it."""
    path = state_dir / "portals.json"
    if path.exists():
        return str(json.loads(path.read_text())["password"])
    password = secrets.token_urlsafe(12)
    path.write_text(json.dumps({"user": DEV_USER, "password": password}))
    path.chmod(0o600)
    return password


# The portals' databases on the dev stack's server: <prefix>_<code>, kept between runs.
PORTAL_DB_PREFIX = "iclaim_portal"


async def start_portals(
    state_dir: Path,
    database_url: str,
    credentials_path: Path,
    ports: tuple[int, int] = (HOSPITAL_PORT, INSURER_PORT),
    db_prefix: str = PORTAL_DB_PREFIX,
) -> Portals:
    if importlib.util.find_spec("iclaim_portal") is None:
        return Portals()
    hospital = json.loads(credentials_path.read_text())["hospitals"][0]["code"]
    portals = Portals(password=_dev_password(state_dir))
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for code, port in ((hospital, ports[0]), (PULL_INSURER, ports[1])):
            db = await ensure_database(database_url, portal_database(db_prefix, code))
            # localhost, not 127.0.0.1: passkeys (WebAuthn) need a domain as relying-party id
            origin = f"http://localhost:{port}"
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "ICLAIM_STATE_DIR": str(state_dir),
                "ICLAIM_PORTAL_CREDENTIALS": str(credentials_path),
                "ICLAIM_PORTAL_CODE": code,
                "ICLAIM_PORTAL_DATABASE_URL": db,
                "ICLAIM_PORTAL_ADDR": f"127.0.0.1:{port}",
                "ICLAIM_PORTAL_ORIGIN": origin,
                "ICLAIM_PORTAL_BOOTSTRAP_ADMIN": DEV_USER,
                "ICLAIM_PORTAL_BOOTSTRAP_PASSWORD": portals.password,
            }
            with (logs / f"portal-{code}.log").open("ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    *tied.command(os.getpid(), "iclaim_portal"), env=env, stdout=log, stderr=log
                )
            portals.procs.append(proc)
            await _wait_listening(proc, port)
            portals.urls[code] = origin
    except BaseException:
        await portals.stop()
        raise
    return portals


async def _wait_listening(proc: asyncio.subprocess.Process, port: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"portal on port {port} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"portal on port {port} did not start within {START_TIMEOUT_S} s")

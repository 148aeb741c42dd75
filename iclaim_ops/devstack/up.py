"""`iclaim up` / `make run`: infrastructure, registry seed, services, gateway,
a ready line, the demo, then serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from iclaim.client.credentials import load_dev_credentials
from iclaim_hub.common.db import create_pool
from iclaim_hub.crypto.secretbox import MASTER_KEY_ENV, SecretBox
from iclaim.crypto.signing import b64url_decode
from iclaim_ops.devstack.infra import Infra, start_infra
from iclaim_ops.devstack.portals import Portals, start_portals
from iclaim_ops.devstack.seed import load_or_create_master_key, seed_dev_registry
from iclaim_ops.devstack.stack import Ports, Stack
from iclaim_hub.registry.store import RegistryStore


def state_dir_from_env() -> Path:
    return Path(os.environ.get("ICLAIM_STATE_DIR", ".iclaim/dev")).resolve()


async def prepare(
    state_dir: Path, infra: Infra, master_key: str, gateway: str, credentials_path: Path
) -> None:
    """Registry schema + dev principals + TLS material + credentials.json."""
    from gateway.tls import ensure_dev_tls

    tls = ensure_dev_tls(state_dir)
    pool = await create_pool(infra.database_url, max_size=2)
    try:
        registry = RegistryStore(pool, SecretBox(b64url_decode(master_key)))
        await registry.migrate()
        await seed_dev_registry(registry, credentials_path, gateway=gateway, ca_cert=tls.ca_cert)
    finally:
        await pool.close()


async def _serve(demo: bool) -> int:
    state_dir = state_dir_from_env()
    state_dir.mkdir(parents=True, exist_ok=True)
    master_key = os.environ.get(MASTER_KEY_ENV) or load_or_create_master_key(state_dir)
    credentials_path = state_dir / "credentials.json"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    infra = await start_infra(state_dir)
    stack = Stack(state_dir, infra.database_url, infra.redis_url, master_key, Ports())
    portals = Portals()
    try:
        await prepare(state_dir, infra, master_key, stack.gateway, credentials_path)
        await stack.start()
        portals = await start_portals(state_dir, infra.database_url, credentials_path)
        print(ready_line(stack, credentials_path) + ", " + portals.describe(), flush=True)
        if demo:
            from iclaim_ops.devstack.demo import run_demo

            await run_demo(load_dev_credentials(path=credentials_path))
            print("demo done; serving until Ctrl-C", flush=True)
        died = asyncio.create_task(_first_exit(stack))
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({died, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (died, waiter):
            task.cancel()
        if died in done and not died.cancelled() and died.exception() is None:
            print(f"a service exited unexpectedly: {died.result()}; stopping", flush=True)
            return 1
        return 0
    finally:
        await portals.stop()
        await stack.stop()
        infra.stop()
        print("stopped", flush=True)


def ready_line(stack: Stack, credentials_path: Path) -> str:
    """One line: where everything is, and how the insurers are connected
    (the sandbox's by mode, plus TESTPULL, which pulls and is yours to drive)."""
    modes = dict(stack.sandbox_modes)
    modes["pull"] = modes.get("pull", 0) + 1  # TESTPULL
    by_mode = ", ".join(f"{n} {mode}" for mode, n in modes.items())
    return (
        f"iClaim clearinghouse ready: gateway {stack.gateway} (TLS, CA {stack.state_dir}/tls/ca.pem),"
        f" credentials {credentials_path}, insurers {sum(modes.values())} ({by_mode}; sandbox insurers"
        f" in their own process, {stack.sandbox_credentials}), admin {stack.admin_config},"
        f" logs {stack.logs_dir}"
    )


async def _first_exit(stack: Stack) -> str:
    waits = {asyncio.create_task(p.wait()): name for name, p in stack.procs.items()}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return waits[next(iter(done))]


def run_up(demo: bool = True) -> int:
    return asyncio.run(_serve(demo))

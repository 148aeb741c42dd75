"""A portal served by uvicorn on a free loopback port, in the test's event loop."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url as b64url_encode
from iclaim_portal.app import build_app
from iclaim_portal.config import Config, load_credentials, side_of
from iclaim_portal.context import Portal

ADMIN = "admin"


def offline_credentials(directory: Path, code: str = "H0001") -> Path:
    """A hospital's credentials for a gateway that is never called (pages that
    need no clearinghouse: sign-in, sessions, passkeys)."""
    private, _ = generate_encryption_key(f"{code}-k1")
    path = directory / "credentials.json"
    path.write_text(
        json.dumps(
            {
                "gateway": "127.0.0.1:9",
                "hospitals": [
                    {
                        "code": code,
                        "key_id": "k-test",
                        "secret": b64url_encode(secrets.token_bytes(32)),
                        "encryption_private_jwk": private,
                    }
                ],
            }
        )
    )
    return path


class RunningPortal:
    def __init__(self, url: str, config: Config, password: str, app: Starlette) -> None:
        self.url = url
        self.config = config
        self.password = password
        self.app = app

    @property
    def portal(self) -> Portal:
        """What its handlers reach (tests swap the SDK clients for fakes here)."""
        portal: Portal = self.app.state.portal
        return portal


@asynccontextmanager
async def running_portal(
    credentials: Path, code: str, database_url: str, *, origin_host: str = "127.0.0.1"
) -> AsyncIterator[RunningPortal]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    password = secrets.token_urlsafe(12)
    origin = f"http://{origin_host}:{port}"
    config = Config(
        side=side_of(credentials, code),
        credentials=load_credentials(credentials, code),
        database_url=database_url,
        origin=origin,
        host="127.0.0.1",
        port=port,
        bootstrap_admin=ADMIN,
        bootstrap_password=password,
    )
    app = build_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningPortal(origin, config, password, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()

"""What the dev stack sets up per run, because it depends on this run's ports:
the sandbox insurers' registration and credentials file (their endpoints), and
the operator's `admin.json` (the adapter's AdminService address and token)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iclaim.crypto.signing import b64url_decode
from iclaim_hub.common.db import create_pool
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.store import RegistryStore
from iclaim_ops.devstack.sandbox_seed import (
    SandboxListen,
    mode_counts,
    seed_sandbox,
    write_private_json,
)

if TYPE_CHECKING:
    from iclaim_ops.devstack.stack import Stack


@dataclass(frozen=True)
class Prepared:
    admin_token: str
    sandbox_modes: dict[str, int]


def admin_token_for(stack: Stack) -> str:
    """The token in admin.json if there is a usable one (an operator's saved
    config keeps working across runs), else a new one."""
    try:
        token = json.loads(stack.admin_config.read_text()).get("token", "")
    except (OSError, ValueError, AttributeError):
        token = ""
    if isinstance(token, str) and 32 <= len(token) <= 512 and all("!" <= c <= "~" for c in token):
        return token
    return secrets.token_urlsafe(32)


async def prepare_participants(stack: Stack) -> Prepared:
    from gateway.tls import ensure_dev_server_cert, ensure_dev_tls

    gateway_tls = ensure_dev_tls(stack.state_dir)
    sandbox_tls = ensure_dev_server_cert(stack.state_dir, "sandbox", "iClaim dev sandbox insurers")
    pool = await create_pool(stack.database_url, max_size=2)
    try:
        registry = RegistryStore(pool, SecretBox(b64url_decode(stack.master_key)))
        await registry.migrate()
        written = await seed_sandbox(
            registry,
            stack.sandbox_credentials,
            gateway=stack.gateway,
            ca_cert=gateway_tls.ca_cert,
            tls_cert=sandbox_tls.server_cert,
            tls_key=sandbox_tls.server_key,
            listen=SandboxListen("127.0.0.1", stack.ports.sandbox_grpc, stack.ports.sandbox_webhook),
        )
    finally:
        await pool.close()
    token = admin_token_for(stack)
    write_private_json(stack.admin_config, {"target": f"127.0.0.1:{stack.ports.adapter}", "token": token})
    modes = mode_counts({e["code"]: e["delivery"] for e in written["insurers"]})
    return Prepared(token, modes)

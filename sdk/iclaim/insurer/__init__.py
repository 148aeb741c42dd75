"""The insurer kit: receive claims (gRPC push, HTTPS webhook, or pull), verify
and deduplicate them, hand each opened claim to your code, and post your
decision back through the gateway (docs/protocol.md §6, §10).

    from iclaim.insurer import Decision, IncomingClaim

    class Rules:
        async def decide(self, claim: IncomingClaim) -> Decision:
            return Decision.approve(claim.billed_satang)

Run it with `iclaim insurer serve --credentials FILE --grpc 0.0.0.0:9443
--handler mymodule:Rules`, or from Python with `iclaim.insurer.runner`.

Names are loaded on first use: `import iclaim.insurer` pulls in neither the
FHIR models nor aiohttp (only `iclaim.insurer.webhook` needs aiohttp).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iclaim.insurer.credentials import (
        CredentialsError,
        InsurerCredentials,
        load_all_insurer_credentials,
        load_insurer_credentials,
    )
    from iclaim.insurer.handler import ApproveInFull, ClaimHandler, Decision, IncomingClaim
    from iclaim.insurer.host import InsurerHost
    from iclaim.insurer.inbox import Inbox, PutResult
    from iclaim.insurer.runner import Running, ServePlan, pull_loop, serve, serve_grpc, start
    from iclaim.insurer.verify import PushRejected, PushVerifier
    from iclaim.insurer.webhook import webhook_app

_WHERE = {
    "CredentialsError": "credentials",
    "InsurerCredentials": "credentials",
    "load_all_insurer_credentials": "credentials",
    "load_insurer_credentials": "credentials",
    "ApproveInFull": "handler",
    "ClaimHandler": "handler",
    "Decision": "handler",
    "IncomingClaim": "handler",
    "InsurerHost": "host",
    "Inbox": "inbox",
    "PutResult": "inbox",
    "Running": "runner",
    "ServePlan": "runner",
    "pull_loop": "runner",
    "serve": "runner",
    "serve_grpc": "runner",
    "start": "runner",
    "PushRejected": "verify",
    "PushVerifier": "verify",
    "webhook_app": "webhook",
}

__all__ = [
    "ApproveInFull",
    "ClaimHandler",
    "CredentialsError",
    "Decision",
    "Inbox",
    "IncomingClaim",
    "InsurerCredentials",
    "InsurerHost",
    "PushRejected",
    "PushVerifier",
    "PutResult",
    "Running",
    "ServePlan",
    "load_all_insurer_credentials",
    "load_insurer_credentials",
    "pull_loop",
    "serve",
    "serve_grpc",
    "start",
    "webhook_app",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'iclaim.insurer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"iclaim.insurer.{module}"), name)

"""The gateway pod's access log is rotated and its rotated files removed once
shipped, with nothing lost (services/audit_log/rotation.py): the real Envoy
(python -m gateway.envoy) writes the log, the shipper renames it past a size and
asks Envoy's admin to reopen it, a real audit_log server receives every line.
Envoy keeps writing to the renamed file until it reopens: those lines must be
shipped too, before the file goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2

from iclaim.v1 import claim_service_pb2
from services.audit_log import rotation
from services.audit_log.shipping import Settings, Shipper
from services.audit_log.tailer import rotated_path
from tests.support.audit import audit_server
from tests.support.gateway import Gateway, call, recording_gateway

pytestmark = pytest.mark.integration

GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
CALLS = 120
ROTATE_BYTES = 8_000  # a dozen lines a file: many rotations in one test


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with recording_gateway(tmp_path / "gw", {"ICLAIM_AUTHZ_PROTOCOL": "grpc"}) as gw:
        authz = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), authz)
        authz.add_insecure_port(f"127.0.0.1:{gw.authz_port}")
        await authz.start()
        try:
            yield gw
        finally:
            await authz.stop(0)


async def _gateway_entries(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit.entry_data WHERE kind = 'GATEWAY_CALL'"))
    finally:
        await conn.close()


async def _run(gateway: Gateway, database_url: str, state: Path) -> tuple[float, float]:
    """Ships while CALLS requests (and a few more) go through Envoy; checks that
    every one of them is in the audit log; (rotations, removals) it made."""
    rotations, removed = rotation.ROTATIONS._value.get(), rotation.REMOVED._value.get()
    async with audit_server(database_url) as (_, stub):
        settings = Settings(
            access_log=gateway.access_log,
            state_path=state,
            poll_s=0.02,
            rotate_bytes=ROTATE_BYTES,
            envoy_admin=f"127.0.0.1:{gateway.admin_port}",
        )
        shipper = Shipper(settings, stub)
        shipping = asyncio.create_task(shipper.run())
        creds = grpc.ssl_channel_credentials(root_certificates=gateway.ca_pem)
        body = claim_service_pb2.GetClaimRequest(transaction_id="txn_x").SerializeToString()
        made = 0
        async with grpc.aio.secure_channel(f"127.0.0.1:{gateway.port}", creds) as channel:
            for _ in range(CALLS):
                await call(channel, GET_CLAIM, body, [])
                made += 1
                await asyncio.sleep(0.005)  # lines keep arriving across the renames
            # Settled: everything shipped, the last rotated file removed (which
            # waits for a line in the new file: a call now and then) and no
            # rotation due, so none can start between this check and the stop.
            for _ in range(300):
                if (
                    await _gateway_entries(database_url) == made
                    and not rotated_path(gateway.access_log).exists()
                    and gateway.access_log.stat().st_size < ROTATE_BYTES
                ):
                    break
                await call(channel, GET_CLAIM, body, [])
                made += 1
                await asyncio.sleep(0.05)
        shipper.stop()
        await asyncio.wait_for(shipping, 15)
    assert await _gateway_entries(database_url) == made
    return rotation.ROTATIONS._value.get() - rotations, rotation.REMOVED._value.get() - removed


async def test_rotated_while_shipping_and_nothing_lost(
    gateway: Gateway, database_url: str, tmp_path: Path
) -> None:
    rotations, removed = await _run(gateway, database_url, tmp_path / "shipper-state")
    assert rotations >= 5, rotations
    assert removed == rotations  # each rotated file removed, once shipped
    assert not rotated_path(gateway.access_log).exists()
    assert gateway.access_log.stat().st_size < 2 * ROTATE_BYTES


async def test_envoy_writing_on_into_the_renamed_file_loses_nothing(
    gateway: Gateway, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envoy's admin does not answer at first: Envoy goes on writing into the
    renamed file, which must stay until Envoy reopened and it is shipped."""
    real, failures = rotation.reopen_logs, [3]

    async def flaky(admin: str, timeout_s: float = rotation.REOPEN_TIMEOUT_S) -> bool:
        if failures[0] > 0:
            failures[0] -= 1
            return False
        return await real(admin, timeout_s)

    monkeypatch.setattr(rotation, "reopen_logs", flaky)
    monkeypatch.setattr(rotation, "REOPEN_RETRY_S", 0.1)
    failed_before = rotation.REOPEN_FAILURES._value.get()
    rotations, removed = await _run(gateway, database_url, tmp_path / "shipper-state")
    assert rotation.REOPEN_FAILURES._value.get() - failed_before == 3
    assert rotations >= 2 and removed == rotations

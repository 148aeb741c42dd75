"""Every service enforces the gRPC message limit itself, not only Envoy."""

from __future__ import annotations

import grpc
import pytest

from iclaim_hub.common.server import MAX_MESSAGE_BYTES
from iclaim_ops.devstack.stack import SERVICES
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("service", [s for s in SERVICES if s.grpc_port_field])
async def test_oversized_message_is_resource_exhausted_at_each_service(
    running_stack: RunningStack, service: object
) -> None:
    port = getattr(running_stack.stack.ports, service.grpc_port_field)  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)]
    ) as ch:
        call = ch.unary_unary("/grpc.health.v1.Health/Check")
        # Field 15, length-delimited, just over the limit: unknown to Health, but
        # the transport refuses it before any handler runs.
        size = MAX_MESSAGE_BYTES + 1
        varint = bytearray()
        n = size
        while n >= 0x80:
            varint.append((n & 0x7F) | 0x80)
            n >>= 7
        varint.append(n)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\x7a" + bytes(varint) + b"x" * size, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

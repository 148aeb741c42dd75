"""claim_router wiring: config, stores, workers, servicers, health, reflection."""

from __future__ import annotations

import contextlib
from functools import partial
from dataclasses import dataclass, field

import grpc

from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS, internal_target
from iclaim.public_api import public_service_names
from iclaim.v1 import claim_service_pb2_grpc, insurer_service_pb2_grpc
from iclaim_hub.common.config import env_addr, env_float, env_str
from iclaim_hub.common.backfill import BackfillTask
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.grpc_tracing import client_interceptors
from iclaim_hub.common.purge import DEFAULT_EVERY_S, MAX_EVERY_S, Purge
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.crypto.secretbox import SecretBox, master_key_from_env
from iclaim_hub.internal.v1 import (
    decision_intake_pb2,
    decision_intake_pb2_grpc,
    delivery_report_pb2,
    delivery_report_pb2_grpc,
)
from iclaim_hub.registry.cache import DirectoryCache
from iclaim_hub.registry.model import DEFAULT_KEY_GRACE_S
from iclaim_hub.registry.store import RegistryStore
from services.claim_router.delivery import PushDeliverer
from services.claim_router.outbox_purge import purge_outbox
from services.claim_router.participation import ParticipationGauges
from services.claim_router.relay import OutboxRelay
from services.claim_router.service import (
    ClaimServicer,
    ClaimSettlementServicer,
    DecisionIntakeServicer,
    DeliveryReportServicer,
    InsurerServicer,
)
from services.claim_router.domain import DEFAULT_PULL_DOWN_AFTER_S
from services.claim_router.store import SPENT_ENVELOPES, PgClaimStore
from services.claim_router.usecases import DEFAULT_PULL_LEASE_S, ClaimRouter
from services.claim_router.watch import ChangeHub

MAX_KEY_GRACE_S = 366 * 24 * 3600.0
# Interest rows (claim_interest) older than this are a dead replica's: removed at start.
STALE_INTEREST_S = 24 * 3600.0
DEFAULT_OUTBOX_KEEP_S = 86_400.0
MAX_OUTBOX_KEEP_S = 90 * 86_400.0

# The gateway sends reflection here, so it lists the whole public contract
# (including services that billing and audit_log serve).
PUBLIC_SERVICES = public_service_names()
INTERNAL_SERVICES = [
    decision_intake_pb2.DESCRIPTOR.services_by_name["DecisionIntakeService"].full_name,
    decision_intake_pb2.DESCRIPTOR.services_by_name["ClaimSettlementService"].full_name,
    delivery_report_pb2.DESCRIPTOR.services_by_name["DeliveryReportService"].full_name,
]


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str
    # Opens the registry's sealed secrets; kept out of repr so it is never logged.
    master_key: bytes = field(repr=False)
    adapter_target: str
    audit_target: str  # "off": no audit relay
    billing_target: str  # "off": no billing relay
    # How long a rotated-out encryption key of a principal stays accepted.
    key_grace_s: float = DEFAULT_KEY_GRACE_S
    pull_lease_s: float = DEFAULT_PULL_LEASE_S
    # §10.5: a pull insurer that has not pulled this long while claims wait is DOWN.
    pull_down_after_s: float = DEFAULT_PULL_DOWN_AFTER_S
    # A relayed outbox event stays this long (for an operator reading the
    # table after an incident), then goes; one not yet relayed stays.
    outbox_keep_s: float = DEFAULT_OUTBOX_KEEP_S
    purge_every_s: float = DEFAULT_EVERY_S

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            serve=ServeConfig.from_env("ROUTER", "127.0.0.1:50051", 9101),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            master_key=master_key_from_env(),
            adapter_target=env_addr("ICLAIM_ADAPTER_TARGET", "127.0.0.1:50061"),
            audit_target=env_str("ICLAIM_AUDIT_TARGET", "127.0.0.1:50071"),
            billing_target=env_str("ICLAIM_BILLING_TARGET", "127.0.0.1:50081"),
            key_grace_s=env_float("ICLAIM_KEY_GRACE_S", DEFAULT_KEY_GRACE_S, lo=0, hi=MAX_KEY_GRACE_S),
            pull_lease_s=env_float("ICLAIM_PULL_LEASE_S", DEFAULT_PULL_LEASE_S, lo=1, hi=3600),
            pull_down_after_s=env_float(
                "ICLAIM_PULL_DOWN_AFTER_S", DEFAULT_PULL_DOWN_AFTER_S, lo=1, hi=7 * 24 * 3600
            ),
            outbox_keep_s=env_float(
                "ICLAIM_OUTBOX_KEEP_S", DEFAULT_OUTBOX_KEEP_S, lo=60, hi=MAX_OUTBOX_KEEP_S
            ),
            purge_every_s=env_float("ICLAIM_PURGE_EVERY_S", DEFAULT_EVERY_S, lo=1, hi=MAX_EVERY_S),
        )


def _channel(target: str) -> grpc.aio.Channel | None:
    if not target or target == "off":
        return None
    return grpc.aio.insecure_channel(
        internal_target(target), options=INTERNAL_CLIENT_OPTIONS, interceptors=client_interceptors()
    )


async def build_server(config: Config, *, adapter_channel: grpc.aio.Channel | None = None) -> GrpcApp:
    """`adapter_channel`: the insurer adapter's, when the caller hosts it (an
    in-process channel, iclaim_ops.cohost) instead of config.adapter_target."""
    # Everything opened goes on this stack: closed in reverse order on stop, or at
    # once if building fails half way.
    resources = contextlib.AsyncExitStack()
    try:
        return await _build(config, resources, adapter_channel)
    except BaseException:
        await resources.aclose()
        raise


async def _build(
    config: Config, resources: contextlib.AsyncExitStack, hosted_adapter: grpc.aio.Channel | None
) -> GrpcApp:
    pool = await create_pool(config.database_url, max_size=20)
    resources.push_async_callback(pool.close)
    registry = RegistryStore(pool, SecretBox(config.master_key))
    await registry.migrate()
    hub = ChangeHub(config.database_url)
    store = PgClaimStore(pool, waiters=hub)
    await store.migrate()
    await store.forget_old_interest(STALE_INTEREST_S)

    audit_channel, billing_channel = channels = [
        _channel(t) for t in (config.audit_target, config.billing_target)
    ]
    adapter_channel = hosted_adapter if hosted_adapter is not None else _channel(config.adapter_target)
    channels.append(adapter_channel)
    for ch in channels:
        if ch is not None:
            resources.push_async_callback(ch.close)
    await hub.start()
    resources.push_async_callback(hub.close)
    relay = OutboxRelay(store, audit_channel, billing_channel)
    resources.push_async_callback(relay.close)
    deliverer = None if adapter_channel is None else PushDeliverer(store, adapter_channel)
    if deliverer is not None:
        resources.push_async_callback(deliverer.close)

    router = ClaimRouter(
        store,
        DirectoryCache(registry),
        deliverer,
        hub,
        key_grace_s=config.key_grace_s,
        pull_lease_s=config.pull_lease_s,
        pulls=registry,
        pull_down_after_s=config.pull_down_after_s,
    )
    participation = ParticipationGauges(router, registry, store)
    resources.push_async_callback(participation.close)
    purge = Purge("router_outbox", partial(purge_outbox, store, config.outbox_keep_s), config.purge_every_s)
    resources.push_async_callback(purge.close)
    backfill = BackfillTask(pool, SPENT_ENVELOPES)
    resources.push_async_callback(backfill.close)
    servicers = [
        partial(claim_service_pb2_grpc.add_ClaimServiceServicer_to_server, ClaimServicer(router)),
        partial(insurer_service_pb2_grpc.add_InsurerServiceServicer_to_server, InsurerServicer(router)),
        partial(
            decision_intake_pb2_grpc.add_DecisionIntakeServiceServicer_to_server,
            DecisionIntakeServicer(router),
        ),
        partial(
            decision_intake_pb2_grpc.add_ClaimSettlementServiceServicer_to_server,
            ClaimSettlementServicer(router),
        ),
        partial(
            delivery_report_pb2_grpc.add_DeliveryReportServiceServicer_to_server,
            DeliveryReportServicer(router),
        ),
    ]
    # Reflection goes through the gateway: it lists only the public contract.
    server, port, health = await bind_server(
        config.serve.listen_addr, servicers, PUBLIC_SERVICES, INTERNAL_SERVICES
    )
    workers = [relay.start, participation.start, purge.start, backfill.start]
    if deliverer is not None:
        workers.append(deliverer.start)
    return GrpcApp(server=server, port=port, health=health, workers=workers, cleanup=resources.aclose)


def main() -> None:
    run_service(Config.from_env, build_server)

"""Wiring of the insurer adapter (the hub's outbound side): config, stores,
registry cache, pushers, dispatcher, reporter, and the gRPC server with
InsurerAdapterService (from the router) and AdminService (operators, §11)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import structlog

from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS, internal_target
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common import tracing
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.grpc_tracing import client_interceptors
from iclaim_hub.common.backfill import BackfillTask
from iclaim_hub.common.purge import DEFAULT_EVERY_S, MAX_EVERY_S, Purge, remove_in_batches
from iclaim_hub.common.server import GrpcApp, ServeConfig, bind_server, run_service
from iclaim_hub.crypto.secretbox import SecretBox, check_master_key, master_key_from_env
from iclaim_hub.internal.v1 import admin_pb2_grpc, insurer_adapter_pb2, insurer_adapter_pb2_grpc
from iclaim_hub.registry.store import RegistryStore
from services.insurer_adapter.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from services.insurer_adapter.admin import AdminServicer, admin_token_digest
from services.insurer_adapter.dispatcher import Dispatcher
from services.insurer_adapter.domain import Backoff, DeliverySettings
from services.insurer_adapter.endpoints import MAX_TTL_S, EndpointCache
from services.insurer_adapter.push_grpc import GrpcPusher
from services.insurer_adapter.push_webhook import WebhookPusher
from services.insurer_adapter.push_tracing import TracedPusher
from services.insurer_adapter.pushers import ByMode, ClientIdentity, Pusher
from services.insurer_adapter.reporter import Reporter
from services.insurer_adapter.answer_batches import BatchedAnswers
from services.insurer_adapter.router_answers import RouterAnswers
from services.insurer_adapter.router_reports import RouterReports
from services.insurer_adapter.service import InsurerAdapterServicer
from services.insurer_adapter.store import TAKEN_ENVELOPES, PgAdapterStore
from services.insurer_adapter.taken_marks import TakenMarks
from services.insurer_adapter.usecases import ClaimIntake, DeliveryAdmin

log = structlog.get_logger("iclaim.adapter")

DEFAULT_DELIVERIES_KEEP_S = 7 * 86_400.0
MAX_DELIVERIES_KEEP_S = 366 * 86_400.0

SERVICE_NAME = insurer_adapter_pb2.DESCRIPTOR.services_by_name["InsurerAdapterService"].full_name


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str = field(repr=False)
    master_key: bytes = field(repr=False)  # opens the endpoint keys sealed in the registry
    # SHA-256 of ICLAIM_ADMIN_TOKEN (required): the AdminService's bearer token.
    admin_token_sha256: bytes = field(repr=False)
    router_target: str = "127.0.0.1:50051"
    delivery: DeliverySettings = DeliverySettings()
    # The hub's client certificate for insurers registered with endpoint_mtls.
    client_cert: Path | None = None
    client_key: Path | None = None
    endpoint_ttl_s: float = 3.0  # registry changes reach pushes within this (§11: 5 s)
    # A delivery taken and reported stays this long after the router last handed
    # it off (a later hand-off is a duplicate, not a second push), then goes.
    deliveries_keep_s: float = DEFAULT_DELIVERIES_KEEP_S
    purge_every_s: float = DEFAULT_EVERY_S

    def __post_init__(self) -> None:
        check_master_key(self.master_key)
        if len(self.admin_token_sha256) != 32:
            raise ConfigError("the admin token digest must be a SHA-256 (ICLAIM_ADMIN_TOKEN)")
        if not self.database_url:
            raise ConfigError("ICLAIM_DATABASE_URL must be set")
        d = self.delivery
        if d.max_inflight < 1:
            raise ConfigError("ICLAIM_DELIVERY_MAX_INFLIGHT must be at least 1")
        for name in ("probe_s", "expiry_s", "timeout_s", "lease_s", "poll_s", "report_deadline_s"):
            if getattr(d, name) <= 0:
                raise ConfigError(f"delivery {name} must be positive")
        if not 0 < d.backoff.base_s <= d.backoff.max_s:
            raise ConfigError("ICLAIM_DELIVERY_BACKOFF_BASE_S must be positive and <= _MAX_S")
        if d.lease_s <= d.timeout_s + 1 + d.report_deadline_s:
            # A live attempt (the push, then relaying a decision in its answer,
            # §10.6) must never lose its row to another worker.
            raise ConfigError(
                "ICLAIM_DELIVERY_LEASE_S must exceed ICLAIM_DELIVERY_TIMEOUT_S + 1 s"
                f" + the report deadline ({d.report_deadline_s:g} s)"
            )
        if not 0 < self.endpoint_ttl_s <= MAX_TTL_S:
            raise ConfigError(f"endpoint cache TTL must be within 0..{MAX_TTL_S} s")
        if self.deliveries_keep_s <= d.expiry_s:
            # The router hands a claim off again until it hears it was taken,
            # within the delivery's life at most: the row must outlive that.
            raise ConfigError("ICLAIM_DELIVERIES_KEEP_S must exceed ICLAIM_DELIVERY_EXPIRY_S")
        if not 0 < self.purge_every_s <= MAX_EVERY_S:
            raise ConfigError(f"ICLAIM_PURGE_EVERY_S must be within 0..{MAX_EVERY_S:g} s")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError("ICLAIM_DELIVERY_CLIENT_CERT and ICLAIM_DELIVERY_CLIENT_KEY go together")
        for path in (self.client_cert, self.client_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} is not a readable file")

    @classmethod
    def from_env(cls) -> Config:
        timeout_s = env_float("ICLAIM_DELIVERY_TIMEOUT_S", 10.0, lo=0.1, hi=60)
        return cls(
            serve=ServeConfig.from_env("ADAPTER", "127.0.0.1:50061", 9102),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            master_key=master_key_from_env(),
            admin_token_sha256=admin_token_digest(env_str("ICLAIM_ADMIN_TOKEN")),
            router_target=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            delivery=DeliverySettings(
                max_inflight=env_int("ICLAIM_DELIVERY_MAX_INFLIGHT", 16, lo=1, hi=1024),
                probe_s=env_float("ICLAIM_DELIVERY_PROBE_S", 30.0, lo=0.05, hi=3600),
                backoff=Backoff(
                    base_s=env_float("ICLAIM_DELIVERY_BACKOFF_BASE_S", 1.0, lo=0.01, hi=60),
                    max_s=env_float("ICLAIM_DELIVERY_BACKOFF_MAX_S", 60.0, lo=0.01, hi=3600),
                ),
                expiry_s=env_float("ICLAIM_DELIVERY_EXPIRY_S", 86400.0, lo=1, hi=30 * 86400),
                timeout_s=timeout_s,
                lease_s=env_float("ICLAIM_DELIVERY_LEASE_S", max(30.0, timeout_s + 20), lo=2, hi=3600),
                poll_s=env_float("ICLAIM_DELIVERY_POLL_S", 1.0, lo=0.01, hi=60),
            ),
            client_cert=_optional_path("ICLAIM_DELIVERY_CLIENT_CERT"),
            client_key=_optional_path("ICLAIM_DELIVERY_CLIENT_KEY"),
            deliveries_keep_s=env_float(
                "ICLAIM_DELIVERIES_KEEP_S", DEFAULT_DELIVERIES_KEEP_S, lo=60, hi=MAX_DELIVERIES_KEEP_S
            ),
            purge_every_s=env_float("ICLAIM_PURGE_EVERY_S", DEFAULT_EVERY_S, lo=1, hi=MAX_EVERY_S),
        )


@dataclass
class AdapterApp(GrpcApp):
    """The adapter's App, with its delivery use cases for in-process callers (tests)."""

    deliveries: DeliveryAdmin | None = None
    endpoints: EndpointCache | None = None


async def build_server(config: Config, *, router_channel: grpc.aio.Channel | None = None) -> AdapterApp:
    """Migrates and builds the dispatcher, the reporter and the server, bound to
    config.serve.listen_addr (port 0 picks a free one). `router_channel`: the
    router's, when the caller hosts it (an in-process channel, iclaim_ops.cohost)
    instead of config.router_target."""
    settings = config.delivery
    identity = None
    if config.client_cert is not None and config.client_key is not None:
        identity = ClientIdentity.load(config.client_cert, config.client_key)
    pool = await create_pool(config.database_url)
    channel = router_channel
    if channel is None:
        channel = grpc.aio.insecure_channel(
            internal_target(config.router_target),
            options=INTERNAL_CLIENT_OPTIONS,
            interceptors=client_interceptors(),
        )
    pusher: Pusher = ByMode(
        {
            "grpc": GrpcPusher(settings.timeout_s, identity),
            "webhook": WebhookPusher(settings.timeout_s, identity, settings.max_inflight),
        }
    )
    if tracing.enabled():
        pusher = TracedPusher(pusher)
    try:
        store = PgAdapterStore(pool)
        registry = RegistryStore(pool, SecretBox(config.master_key))
        await registry.migrate()  # idempotent; lets the adapter start first
        await store.migrate()
        endpoints = EndpointCache(registry, config.endpoint_ttl_s)
        owner = f"adapter-{secrets.token_hex(6)}"
        dispatcher: Dispatcher | None = None

        def redriven(insurer_code: str) -> None:
            if dispatcher is not None:
                dispatcher.notify(insurer_code)

        router_reports = RouterReports(channel, settings.report_deadline_s)
        reporter = Reporter(
            store,
            router_reports,
            settings,
            owner=owner,
            on_redriven=redriven,
        )
        dispatcher = Dispatcher(
            store,
            endpoints,
            pusher,
            registry,
            settings,
            owner=owner,
            on_report=reporter.notify,
            reports=router_reports,
            taken_marks=TakenMarks(store, router_reports, reporter.notify, expiry_s=settings.expiry_s),
            answers=BatchedAnswers(
                RouterAnswers(channel, settings.report_deadline_s),
                traced=tracing.enabled,
            ),
        )
        intake = ClaimIntake(store, endpoints, settings.expiry_s, dispatcher, push_s=settings.timeout_s)
        deliveries = DeliveryAdmin(store, settings.expiry_s, reporter.notify)
        purge = Purge(
            "adapter_deliveries",
            partial(remove_in_batches, partial(store.purge_finished, config.deliveries_keep_s)),
            config.purge_every_s,
        )
        backfill = BackfillTask(pool, TAKEN_ENVELOPES)
        servicers = [
            partial(
                insurer_adapter_pb2_grpc.add_InsurerAdapterServiceServicer_to_server,
                InsurerAdapterServicer(intake),
            ),
            # §11: the operators' AdminService, on this internal port only.
            partial(
                admin_pb2_grpc.add_AdminServiceServicer_to_server,
                AdminServicer(registry, deliveries, config.admin_token_sha256),
            ),
        ]
        server, port, health = await bind_server(
            config.serve.listen_addr, servicers, [SERVICE_NAME, ADMIN_SERVICE_NAME]
        )
    except BaseException:
        await pusher.close()
        await channel.close()
        await pool.close()
        raise

    async def close() -> None:
        # After the gRPC server stopped: the background work, then its connections
        # (each closed even if an earlier step failed).
        try:
            await purge.close()
            await backfill.close()
            await reporter.stop()
            await dispatcher.stop()  # releases this process's leases
        finally:
            try:
                await pusher.close()
            finally:
                await channel.close()
                await pool.close()

    log.info("adapter_built", port=port, router=config.router_target)
    return AdapterApp(
        server,
        port,
        health,
        workers=(dispatcher.start, reporter.start, purge.start, backfill.start),
        cleanup=close,
        deliveries=deliveries,
        endpoints=endpoints,
    )


def main() -> None:
    run_service(Config.from_env, build_server)

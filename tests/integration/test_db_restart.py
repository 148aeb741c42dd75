"""A PostgreSQL restart under load is an outage, not a bug (issue 10, item 7).

Four hospital clients submit claims through the gateway while the stack's own
PostgreSQL (a private server, never the machine's) is stopped for ~2 s and
started again, twice (a clean stop, then a crash). Every attempt any client
made is recorded with its raw gRPC status (below the SDK's retries). The
contract: a lost or refused database connection is UNAVAILABLE (retryable),
never INTERNAL or UNKNOWN; the SDK rides through; every acknowledged claim is
decided."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis as sync_redis
from prometheus_client.parser import text_string_to_metric_families

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.client.signer import DEFAULT_MAX_ATTEMPTS, _error_info, signing_interceptors
from iclaim.limits import CLIENT_OPTIONS
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import claim_service_pb2_grpc
from tests.support.claims import fhir
from tests.support.databases import REDIS_BASE_URL
from tests.support.private_postgres import PrivatePostgres, private_postgres, running_stack_on
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration
S = pb.ClaimState

RESTART_MODES = ("fast", "immediate")  # "immediate": as if the server crashed
DOWN_S = 2.0
UP_S = 5.0  # apart enough that one call's retries meet the database up between
PACE_S = 0.1  # between one client's submissions: a few hundred claims in all
MAX_CLAIMS_PER_CLIENT = 150
RAW_ATTEMPTS = 60  # the client without SDK retries gives up on a claim after this many
DECIDED_WITHIN_S = 45.0
INSURERS = ("AIA", "BLA", "AZAY")
# What a client may see while the database restarts: success, or "try again".
ALLOWED = {"OK", "UNAVAILABLE"}


@dataclass
class Outcomes:
    """Every attempt's (method, code, reason), as it came off the wire."""

    attempts: list[tuple[str, str, str]] = field(default_factory=list)

    def codes(self) -> Counter[str]:
        return Counter(code for _, code, _ in self.attempts)


class _Recorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sits below the SDK's signing/retrying interceptor: sees each attempt."""

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        code = await call.code()
        reason = "" if code == grpc.StatusCode.OK else _error_info(await call.trailing_metadata())[0]
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self._outcomes.attempts.append((method.rsplit("/", 1)[-1], code.name, reason))
        return call


async def _client(creds: Credentials, outcomes: Outcomes, max_attempts: int) -> HospitalClient:
    client = HospitalClient(creds)
    await client.channel.close()
    root = creds.ca_cert.read_bytes() if creds.ca_cert else None
    # The SDK's own channel plus the recorder under its retries.
    client.channel = grpc.aio.secure_channel(
        creds.gateway,
        grpc.ssl_channel_credentials(root_certificates=root),
        options=CLIENT_OPTIONS,
        interceptors=[
            *signing_interceptors(creds.code, creds.key_id, creds.secret, max_attempts=max_attempts),
            _Recorder(outcomes),
        ],
    )
    client.stub = claim_service_pb2_grpc.ClaimServiceStub(client.channel)
    return client


@pytest.fixture
async def stack_on_private_pg(tmp_path: Path) -> AsyncIterator[tuple[RunningStack, PrivatePostgres]]:
    redis_url = f"{REDIS_BASE_URL}/{int(os.environ.get('ICLAIM_TEST_DB_RESTART_REDIS_DB', '14'))}"
    sync_redis.Redis.from_url(redis_url).flushdb()
    async with (
        private_postgres() as pg,
        running_stack_on(tmp_path / "stack", pg.server_url, redis_url) as running,
    ):
        yield running, pg
    sync_redis.Redis.from_url(redis_url).flushdb()


async def _scrape_error_codes(running: RunningStack) -> dict[str, float]:
    """INTERNAL/UNKNOWN counts by service/method from every service's /metrics."""
    p = running.stack.ports
    bad: dict[str, float] = {}
    for port in (p.router_metrics, p.adapter_metrics, p.audit_metrics, p.billing_metrics, p.authz_metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        raw = (await reader.read()).decode(errors="replace")
        writer.close()
        body = raw.split("\r\n\r\n", 1)[-1]
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_code") in (
                    "INTERNAL",
                    "UNKNOWN",
                ):
                    labels = sample.labels
                    key = f"{labels['grpc_service']}/{labels['grpc_method']}:{labels['grpc_code']}"
                    bad[key] = bad.get(key, 0.0) + sample.value
    return {k: v for k, v in bad.items() if v > 0}


class Load:
    """Four hospital clients submitting plain claims until stopped: three
    through the SDK (its retries), one without retries resending the same
    sealed claim itself. What each attempt and each call ended with is kept."""

    def __init__(self, hospitals: list[Credentials]) -> None:
        self.outcomes = Outcomes()
        self.acked: dict[str, str] = {}  # transaction id -> claim_ref
        self.sdk_failures: list[str] = []  # submit_claim raised despite the SDK's retries
        self.raw_gave_up: list[str] = []
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._refs = itertools.count()
        self._tasks = [asyncio.create_task(self._sdk_client(c)) for c in hospitals]
        self._tasks.append(asyncio.create_task(self._raw_client(hospitals[0])))

    async def more_acked(self, n: int) -> None:
        """Waits until `n` more claims are acknowledged (a client that died
        makes this time out; stop() then raises its error)."""
        target = len(self.acked) + n
        async with asyncio.timeout(60):
            while len(self.acked) < target:
                self._progress.clear()
                await self._progress.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def _ack(self, claim: pb.Claim, ref: str) -> None:
        self.acked[claim.transaction_id] = ref
        self._progress.set()

    def _next_claim(self, code: str) -> tuple[str, str, int, bytes]:
        n = next(self._refs)
        ref, insurer, amount = f"DBR-{secrets.token_hex(4)}-{n}", INSURERS[n % len(INSURERS)], 1_000 + n
        return ref, insurer, amount, fhir(code, insurer, ref, f"POL-DBR-{n}", amount)

    async def _sdk_client(self, creds: Credentials) -> None:
        async with await _client(creds, self.outcomes, DEFAULT_MAX_ATTEMPTS) as client:
            for n in range(MAX_CLAIMS_PER_CLIENT):
                if self._stop.is_set():
                    return
                ref, insurer, amount, doc = self._next_claim(creds.code)
                try:
                    claim = await client.submit_claim(
                        doc,
                        insurer_code=insurer,
                        claim_ref=ref,
                        amount_satang=amount,
                        decision_timeout_s=1.0 if n % 2 else 0.0,  # the wait-for-decision path too
                    )
                    self._ack(claim, ref)
                    await client.get_claim(claim.transaction_id)
                except grpc.aio.AioRpcError as err:
                    self.sdk_failures.append(f"{ref}: {err.code().name}")
                await asyncio.sleep(PACE_S)

    async def _raw_client(self, creds: Credentials) -> None:
        async with await _client(creds, self.outcomes, 1) as client:
            for _ in range(MAX_CLAIMS_PER_CLIENT):
                if self._stop.is_set():
                    return
                ref, insurer, amount, doc = self._next_claim(creds.code)
                envelope = await client.seal_claim(
                    doc, insurer_code=insurer, claim_ref=ref, amount_satang=amount
                )
                for _attempt in range(RAW_ATTEMPTS):
                    try:
                        claim = await client.submit_claim(
                            doc, insurer_code=insurer, claim_ref=ref, amount_satang=amount, envelope=envelope
                        )
                    except grpc.aio.AioRpcError as err:
                        if err.code() != grpc.StatusCode.UNAVAILABLE:
                            self.raw_gave_up.append(f"{ref}: {err.code().name}")
                            break
                        await asyncio.sleep(0.2)  # SubmitClaim is idempotent: resend as is
                        continue
                    self._ack(claim, ref)
                    break
                else:
                    self.raw_gave_up.append(f"{ref}: still UNAVAILABLE")
                await asyncio.sleep(PACE_S)


async def _undecided(hospitals: list[Credentials], acked: set[str]) -> set[str]:
    """The acknowledged claims not APPROVED within DECIDED_WITHIN_S."""
    readers = [HospitalClient(creds) for creds in hospitals]
    pending = set(acked)
    try:
        async with asyncio.timeout(DECIDED_WITHIN_S):
            while pending:
                for reader in readers:
                    claims = await reader.list_claims(state=S.CLAIM_STATE_APPROVED)
                    pending -= {c.transaction_id for c in claims}
                if pending:
                    await asyncio.sleep(0.5)
    except TimeoutError:
        pass
    finally:
        for reader in readers:
            await reader.close()
    return pending


async def test_postgres_restarts_under_load_give_unavailable_and_the_sdk_rides_through(
    stack_on_private_pg: tuple[RunningStack, PrivatePostgres],
) -> None:
    running, pg = stack_on_private_pg
    hospitals = [running.creds(code) for code in ("10670", "10671", "11001")]
    load = Load(hospitals)
    try:
        await load.more_acked(20)  # load is flowing before the first restart
        for mode in RESTART_MODES:
            await pg.stop(mode)
            await asyncio.sleep(DOWN_S)
            await pg.start()
            await asyncio.sleep(UP_S)
        await load.more_acked(20)  # and after the last one
    finally:
        await load.stop()

    codes = load.outcomes.codes()
    # The restarts really met the load: some attempts were refused.
    assert codes["UNAVAILABLE"] > 0, codes
    assert set(codes) <= ALLOWED, Counter(a for a in load.outcomes.attempts if a[1] not in ALLOWED)
    assert not load.sdk_failures, load.sdk_failures
    assert not load.raw_gave_up, load.raw_gave_up
    assert not await _scrape_error_codes(running)  # no INTERNAL on internal calls either
    assert all(proc.returncode is None for proc in running.stack.procs.values())
    # Nothing acknowledged is lost: every claim is decided (plain policies: APPROVED).
    undecided = await _undecided(hospitals, set(load.acked))
    assert not undecided, f"{len(undecided)} of {len(load.acked)} acknowledged claims undecided"

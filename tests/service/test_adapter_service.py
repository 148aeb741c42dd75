"""insurer_adapter's intake (InsurerAdapterService/DeliverClaim) in-process on
port 0 with real PostgreSQL: durable before the ack, idempotent by
transaction_id, a clear reason for bad input; and the schema after the
simulated insurers left (no private keys, no decisions)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from iclaim_hub.common.db import apply_migrations
from iclaim_hub.common.server import REASON_TRAILER
from iclaim_hub.internal.v1 import insurer_adapter_pb2
from services.insurer_adapter.store import MIGRATIONS, SCHEMA, PgAdapterStore
from tests.support.delivery_endpoints import HOSPITAL, Harness, delivery_harness, free_port


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        # Registered, but nobody listens: intake is tested, not pushing.
        await harness.add_insurer("AIA", "grpc", f"127.0.0.1:{free_port()}")
        await harness.add_insurer("VIRIYAH", "webhook", "https://127.0.0.1:1/claims")
        await harness.add_insurer("TESTPULL", "pull", "")
        yield harness


def _reason(err: grpc.aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(REASON_TRAILER, "")


def _deliveries(result: str) -> float:
    return REGISTRY.get_sample_value("iclaim_adapter_deliveries_total", {"result": result}) or 0.0


async def test_a_delivery_is_stored_before_the_ack(h: Harness) -> None:
    stub = await h.start_adapter()
    request = h.request("AIA")
    response = await stub.DeliverClaim(request, timeout=5)
    assert response.duplicate is False
    row = await h.row(request.transaction_id)
    assert (row["insurer_code"], row["hospital_code"], row["claim_ref"]) == (
        "AIA",
        HOSPITAL,
        request.claim_ref,
    )
    assert (row["billed_amount_satang"], row["envelope"]) == (request.billed_amount_satang, request.envelope)
    assert (row["state"], row["report_state"]) == ("waiting", "none")
    lifetime = (row["expires_at"] - row["received_at"]).total_seconds()
    assert 3590 < lifetime <= 3600.5  # the harness's ICLAIM_DELIVERY_EXPIRY_S


async def test_redelivery_is_acknowledged_and_stored_once(h: Harness) -> None:
    stub = await h.start_adapter()
    request = h.request("VIRIYAH")
    new_before, dup_before = _deliveries("new"), _deliveries("duplicate")
    first = await stub.DeliverClaim(request, timeout=5)
    second = await stub.DeliverClaim(request, timeout=5)
    assert (first.duplicate, second.duplicate) == (False, True)
    row = await h.row(request.transaction_id)
    assert row["delivery_count"] == 2
    assert _deliveries("new") - new_before == 1
    assert _deliveries("duplicate") - dup_before == 1

    other = insurer_adapter_pb2.DeliverClaimRequest()
    other.CopyFrom(request)
    other.billed_amount_satang += 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeliverClaim(other, timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _reason(err.value) == "DELIVERY_CONFLICT"
    assert (await h.row(request.transaction_id))["billed_amount_satang"] == request.billed_amount_satang


async def test_a_pull_insurer_delivery_is_accepted_and_waits(h: Harness) -> None:
    # The router hands off push insurers only; one switched to pull meanwhile
    # keeps its claim waiting here (pulled through the router instead).
    stub = await h.start_adapter()
    request = h.request("TESTPULL")
    assert (await stub.DeliverClaim(request, timeout=5)).duplicate is False
    assert (await h.row(request.transaction_id))["state"] == "waiting"


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"transaction_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "TRANSACTION_ID_INVALID"),
        ({"transaction_id": "txn bad"}, grpc.StatusCode.INVALID_ARGUMENT, "TRANSACTION_ID_INVALID"),
        ({"insurer_code": "aia"}, grpc.StatusCode.INVALID_ARGUMENT, "INSURER_CODE_INVALID"),
        ({"hospital_code": "bad code!"}, grpc.StatusCode.INVALID_ARGUMENT, "HOSPITAL_CODE_INVALID"),
        ({"claim_ref": ""}, grpc.StatusCode.INVALID_ARGUMENT, "CLAIM_REF_INVALID"),
        ({"billed_amount_satang": -5}, grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_INVALID"),
        ({"envelope": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_MISSING"),
        ({"envelope": "x" * (1024 * 1024 + 1)}, grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE"),
        ({"insurer_code": "NOSUCH"}, grpc.StatusCode.NOT_FOUND, "INSURER_NOT_FOUND"),
        ({"insurer_code": HOSPITAL}, grpc.StatusCode.NOT_FOUND, "INSURER_NOT_FOUND"),  # not an insurer
    ],
)
async def test_bad_deliveries_are_refused_with_a_reason(
    h: Harness, change: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    stub = await h.start_adapter()
    request = h.request("AIA")
    fields: dict[str, Any] = {
        "transaction_id": request.transaction_id,
        "hospital_code": request.hospital_code,
        "insurer_code": request.insurer_code,
        "claim_ref": request.claim_ref,
        "billed_amount_satang": request.billed_amount_satang,
        "envelope": request.envelope,
    }
    fields.update(change)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeliverClaim(insurer_adapter_pb2.DeliverClaimRequest(**fields), timeout=5)
    assert err.value.code() == code
    assert _reason(err.value) == reason
    assert await h.pool.fetchval("SELECT count(*) FROM adapter.deliveries") == 0


async def test_logs_carry_transaction_id_but_no_claim_content(h: Harness) -> None:
    stub = await h.start_adapter()
    request = h.request("AIA")
    request.claim_ref = "HN-SECRET-REF"
    request.envelope = "eyJTRUNSRVRFTlZFTE9QRSI6MX0.a.b.c.d"
    with capture_logs(processors=[merge_contextvars]) as logs:
        await stub.DeliverClaim(request, timeout=5)
    text = json.dumps(logs, default=str)
    assert any(e.get("transaction_id") == request.transaction_id for e in logs)
    for secret in ("HN-SECRET-REF", "eyJTRUNSRVRFTlZFTE9QRSI6MX0"):
        assert secret not in text


# --- DeliverClaims (several hand-offs in one call) -------------------------------------


async def test_a_batch_takes_each_claim_as_deliver_claim_would(h: Harness) -> None:
    stub = await h.start_adapter()
    stored = h.request("AIA")
    await stub.DeliverClaim(stored, timeout=5)
    conflicting = insurer_adapter_pb2.DeliverClaimRequest()
    conflicting.CopyFrom(stored)
    conflicting.billed_amount_satang += 1
    new = [h.request("AIA"), h.request("VIRIYAH")]
    bad = h.request("AIA")
    bad.claim_ref = ""
    claims = [new[0], stored, conflicting, h.request("NOSUCH"), bad, new[1]]
    reply = await stub.DeliverClaims(insurer_adapter_pb2.DeliverClaimsRequest(claims=claims), timeout=5)
    assert list(reply.duplicates) == [1]
    assert {(f.index, f.reason) for f in reply.failed} == {
        (2, "DELIVERY_CONFLICT"),
        (3, "INSURER_NOT_FOUND"),
        (4, "CLAIM_REF_INVALID"),
    }
    for request in new:
        assert (await h.row(request.transaction_id))["state"] == "waiting"
    assert (await h.row(stored.transaction_id))["delivery_count"] == 2
    assert await h.pool.fetchval("SELECT count(*) FROM adapter.deliveries") == 3


@pytest.mark.parametrize(
    ("count", "envelope_bytes", "reason"),
    [(201, 40, "TOO_MANY_CLAIMS"), (3, 350 * 1024, "BATCH_TOO_LARGE")],
)
async def test_a_batch_over_the_calls_limits_is_refused_whole(
    h: Harness, count: int, envelope_bytes: int, reason: str
) -> None:
    stub = await h.start_adapter()
    claims = [h.request("AIA") for _ in range(count)]
    for claim in claims:
        claim.envelope = "e" * envelope_bytes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeliverClaims(insurer_adapter_pb2.DeliverClaimsRequest(claims=claims), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(err.value) == reason
    assert await h.pool.fetchval("SELECT count(*) FROM adapter.deliveries") == 0


async def test_a_batch_at_the_limits_is_taken(h: Harness) -> None:
    stub = await h.start_adapter()
    claims = [h.request("AIA") for _ in range(200)]
    reply = await stub.DeliverClaims(insurer_adapter_pb2.DeliverClaimsRequest(claims=claims), timeout=10)
    assert (list(reply.duplicates), list(reply.failed)) == ([], [])
    assert await h.pool.fetchval("SELECT count(*) FROM adapter.deliveries") == 200


# --- schema ---------------------------------------------------------------------------


async def _tables(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'adapter'")
    return {r["table_name"] for r in rows}


async def test_no_private_key_or_decision_is_kept(h: Harness) -> None:
    await h.start_adapter()
    assert await _tables(h.pool) == {"backfills", "deliveries", "schema_migrations"}
    columns = {
        r["column_name"]
        for r in await h.pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'adapter'"
        )
    }
    assert not {c for c in columns if "jwk" in c or "decision" in c or "private" in c}


async def test_migration_from_the_simulator_schema(database_url: str, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(MIGRATIONS / "0001_adapter.sql", old)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, SCHEMA, old)
        await pool.execute(
            "INSERT INTO adapter.insurer_keys (insurer_code, kid, private_jwk_sealed, public_jwk)"
            " VALUES ('AIA', 'k1', '\\x00', '{}')"
        )
        for txid, status in (("txn-old-received", "received"), ("txn-old-notified", "notified")):
            await pool.execute(
                "INSERT INTO adapter.deliveries (transaction_id, insurer_code, hospital_code, claim_ref,"
                " billed_amount_satang, envelope, envelope_sha256, status, decision_envelope, decided_at)"
                " VALUES ($1, 'AIA', '10670', 'HN-1', 100, 'e', 'h', $2, 'x', now())",
                txid,
                status,
            )
        await pool.execute(
            "INSERT INTO adapter.decisions (transaction_id, seq, state, approved_amount_satang, reason_code,"
            " decision_envelope, final, due_at) VALUES ('txn-old-notified', 1, 'APPROVED', 100, '', 'x',"
            " true, now())"
        )

        await PgAdapterStore(pool).migrate()

        assert await _tables(pool) == {"backfills", "deliveries", "schema_migrations"}
        rows = {
            r["transaction_id"]: r
            for r in await pool.fetch("SELECT * FROM adapter.deliveries ORDER BY transaction_id")
        }
        waiting, done = rows["txn-old-received"], rows["txn-old-notified"]
        assert (waiting["state"], waiting["report_state"], waiting["attempts"]) == ("waiting", "none", 0)
        assert waiting["expires_at"] > waiting["received_at"]
        assert (done["state"], done["report_state"], done["report_kind"]) == ("taken", "done", "taken")
        assert done["taken_at"] is not None
    finally:
        await pool.close()

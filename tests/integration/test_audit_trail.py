"""Through the running stack: every gateway call (accepted or rejected) and
every claim state change is in the audit log, and no personal data is anywhere
but inside the end-to-end envelopes."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import grpc
import pytest

from iclaim.client.hospital import HospitalClient
from iclaim.crypto.signing import b64url_decode
from iclaim.fhir.claim import PatientInfo, build_claim
from iclaim_hub.common.access_log import pseudonym, pseudonym_key
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.audit_trail import entries_for
from tests.support.stack import RunningStack
from tests.support.wire import raw_call

pytestmark = pytest.mark.integration

# Planted personal data: none of it may leave the envelope.
CITIZEN_ID = "3100600123458"
PATIENT = "Somchai Markerpatient"
DIAGNOSIS = "C50.912"
POLICY = "POL-MARKER-99887766"


async def all_entries(stack: RunningStack) -> list[audit_log_pb2.LogEntry]:
    out: list[audit_log_pb2.LogEntry] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.stack.ports.audit}") as ch:
        stub = audit_log_pb2_grpc.AuditLogServiceStub(ch)
        start = 0
        while True:
            resp = await stub.ListEntries(
                audit_log_pb2.ListEntriesRequest(start_index=start, max_entries=1000), timeout=5
            )
            out.extend(resp.entries)
            if resp.next_start_index >= resp.tree_size or not resp.entries:
                return out
            start = resp.next_start_index


async def test_claim_lifecycle_and_rejections_are_audited_without_personal_data(
    running_stack: RunningStack,
) -> None:
    creds = running_stack.creds()
    async with HospitalClient(creds) as client:
        ref = f"AUD-{secrets.token_hex(4)}"
        body = build_claim(
            claim_ref=ref,
            hospital_code=creds.code,
            insurer_code="AIA",
            policy_number=POLICY,
            amount_satang=77_700,
            patient=PatientInfo(name=PATIENT, citizen_id=CITIZEN_ID),
            diagnoses=[DIAGNOSIS],
        )
        claim = await client.submit_claim(
            body, insurer_code="AIA", claim_ref=ref, amount_satang=77_700, decision_timeout_s=15
        )
        assert claim.state == pb.CLAIM_STATE_APPROVED
        await client.get_claim(claim.transaction_id)

    # A forged call: rejected at the gateway, audited as unverified.
    with pytest.raises(grpc.aio.AioRpcError):
        await raw_call(
            creds,
            "/iclaim.v1.ClaimService/GetClaim",
            pb.GetClaimRequest(transaction_id=claim.transaction_id),
            pb.Claim,
            secret=b"\x07" * 32,
        )

    # The claim's state changes, each once and in order. DELIVERED is a state
    # change only when the adapter's acknowledgement came back before the
    # decision (a simulated insurer may decide first); the router's own record
    # says which happened.
    conn = await running_stack.db()
    try:
        row = await conn.fetchrow(
            "SELECT delivered_at, decided_at FROM router.claims WHERE transaction_id = $1",
            claim.transaction_id,
        )
    finally:
        await conn.close()
    assert row is not None and row["decided_at"] is not None
    delivered_first = row["delivered_at"] is not None and row["delivered_at"] < row["decided_at"]
    expected = [
        ("CLAIM_STATE_RECEIVED", creds.code, "AIA"),
        *([("CLAIM_STATE_DELIVERED", "ICLAIM", creds.code)] if delivered_first else []),
        ("CLAIM_STATE_APPROVED", "AIA", creds.code),
    ]

    def state_changes(entries: list[audit_log_pb2.LogEntry]) -> list[tuple[str, str, str]]:
        return [
            (e.event.outcome_reason, e.event.origin_principal, e.event.destination)
            for e in entries
            if e.event.kind == audit_log_pb2.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE
        ]

    def gateway_routes(entries: list[audit_log_pb2.LogEntry]) -> set[str]:
        return {
            e.event.route.rsplit("/", 1)[-1]
            for e in entries
            if e.event.kind == audit_log_pb2.AUDIT_EVENT_KIND_GATEWAY_CALL
        }

    for _ in range(100):
        entries = await entries_for(running_stack, claim.transaction_id, want=0)
        if len(state_changes(entries)) >= len(expected) and {"SubmitClaim", "GetClaim"} <= gateway_routes(
            entries
        ):
            break
        await asyncio.sleep(0.1)
    assert state_changes(entries) == expected
    events = [e.event for e in entries]
    gateway = [e for e in events if e.kind == audit_log_pb2.AUDIT_EVENT_KIND_GATEWAY_CALL]
    submit = [e for e in gateway if e.route.endswith("/SubmitClaim")]
    assert submit and submit[0].origin_principal == creds.code
    assert submit[0].outcome_code == "OK" and submit[0].envelope_sha256 == claim.envelope_sha256
    assert submit[0].size_bytes > 0

    # The rejected call carries no verified identity and no transaction id.
    for _ in range(100):
        every = await all_entries(running_stack)
        rejected = [
            e.event
            for e in every
            if e.event.route == "/iclaim.v1.ClaimService/GetClaim"
            and e.event.outcome_code == "UNAUTHENTICATED"
        ]
        if rejected:
            break
        await asyncio.sleep(0.1)
    # The claimed client is the caller's text: only its keyed hash is recorded.
    key = pseudonym_key(b64url_decode(running_stack.stack.master_key))
    assert rejected and rejected[-1].origin_principal == f"unverified:{pseudonym(key, creds.code)}"
    assert rejected[-1].outcome_reason == "BAD_SIGNATURE"

    # PDPA: the markers appear in no audit row, log line or metric.
    audit_text = "\n".join(str(e) for e in every)
    logs_text = "\n".join(
        p.read_text(errors="replace") for p in Path(running_stack.stack.logs_dir).glob("*.log")
    )
    access_log = running_stack.stack.access_log.read_text(errors="replace")
    metrics_text = ""
    p = running_stack.stack.ports
    for port in (p.router_metrics, p.adapter_metrics, p.audit_metrics, p.billing_metrics, p.authz_metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        metrics_text += (await reader.read()).decode(errors="replace")
        writer.close()
    conn = await running_stack.db()
    try:
        rows = await conn.fetch("SELECT row_to_json(t)::text AS j FROM (SELECT * FROM audit.entry_data) t")
    finally:
        await conn.close()
    db_text = "\n".join(r["j"] for r in rows)
    for marker in (CITIZEN_ID, PATIENT, "Markerpatient", DIAGNOSIS, POLICY):
        for where, text in (
            ("audit", audit_text),
            ("logs", logs_text),
            ("access log", access_log),
            ("metrics", metrics_text),
            ("audit table", db_text),
        ):
            assert marker not in text, f"{marker!r} found in {where}"


async def test_each_principal_proves_its_own_trail_through_the_gateway(
    running_stack: RunningStack,
) -> None:
    from iclaim.audit.trail import GatewayTrail, verify_trail
    from iclaim.client.channel import gateway_channel
    from iclaim.v1 import audit_trail_service_pb2 as apb
    from iclaim.v1 import audit_trail_service_pb2_grpc

    creds = running_stack.creds("10670")
    async with HospitalClient(creds) as client:
        ref = f"TRAIL-{secrets.token_hex(4)}"
        body = build_claim(
            claim_ref=ref,
            hospital_code=creds.code,
            insurer_code="MTL",
            policy_number="POL-T",
            amount_satang=1_500,
            patient=PatientInfo(name="T", citizen_id="1101700203451"),
            diagnoses=["J18.9"],
        )
        claim = await client.submit_claim(
            body, insurer_code="MTL", claim_ref=ref, amount_satang=1_500, decision_timeout_s=15
        )
    await entries_for(running_stack, claim.transaction_id, want=4)
    # A fresh checkpoint so the claim's entries are inside the signed tree.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_stack.stack.ports.audit}") as ch:
        await audit_log_pb2_grpc.AuditLogServiceStub(ch).SignCheckpoint(
            audit_log_pb2.SignCheckpointRequest(), timeout=5
        )

    async with gateway_channel(creds) as channel:
        report = await verify_trail(GatewayTrail(channel), creds.code, None)
        assert report.ok, report.problems
        assert report.verified > 0
        assert all(creds.code in (e.origin_principal, e.destination) for e in report.entries)
        assert claim.transaction_id in {e.transaction_id for e in report.entries}
        # Another hospital's entries are not reachable, even by transaction id.
        other = running_stack.creds("10671")
        async with gateway_channel(other) as other_channel:
            stub = audit_trail_service_pb2_grpc.AuditTrailServiceStub(other_channel)
            theirs = await stub.ListAuditEntries(
                apb.ListAuditEntriesRequest(transaction_id=claim.transaction_id), timeout=5
            )
            assert list(theirs.entries) == []
            mine = await stub.ListAuditEntries(apb.ListAuditEntriesRequest(max_entries=1000), timeout=5)
            assert all("10671" in (e.origin_principal, e.destination) for e in mine.entries)

"""Reads what the hub recorded, straight from its PostgreSQL (the soak's own):
the router's claims and outbox, the audit log's claim state changes, billing's
ledger; whether the hub has settled; and the gateway's access log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.soak.checks import Ledger, RouterClaim, StateChange
from iclaim.crypto.signing import b64url_decode
from iclaim.v1 import claim_service_pb2 as pb
from iclaim_hub.common.access_log import pseudonym_key, request_pseudonym
from iclaim_hub.internal.v1 import audit_log_pb2, billing_intake_pb2

PREFIX = "CLAIM_STATE_"


def _state(value: int) -> str:
    return pb.ClaimState.Name(value).removeprefix(PREFIX)


@dataclass(frozen=True)
class Evidence:
    claims: dict[tuple[str, str], RouterClaim]
    router_changes: list[StateChange]
    billing_events: dict[str, int]
    audit_changes: list[StateChange]
    ledger: Ledger
    taken_with_envelope: list[str]  # deliveries the insurer took that still keep it
    nonce_store_losses: int = 0  # Redis losses the gateway noticed and recorded


async def read(database_url: str) -> Evidence:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        claims = {
            (r["hospital_code"], r["claim_ref"]): RouterClaim(
                r["transaction_id"], r["hospital_code"], r["claim_ref"], _state(r["state"]),
                r["status_reason"], r["approved_amount_satang"], r["holds_envelope"],
            )
            for r in await conn.fetch(
                "SELECT transaction_id, hospital_code, claim_ref, state, status_reason,"
                " approved_amount_satang, envelope <> '' AS holds_envelope FROM router.claims"
            )
        }  # fmt: skip
        router_changes: list[StateChange] = []
        billing_events: Counter[str] = Counter()
        for r in await conn.fetch("SELECT id, topic, payload FROM router.outbox ORDER BY id"):
            if r["topic"] == "audit":
                ev = audit_log_pb2.AuditEvent.FromString(r["payload"])
                if ev.kind == audit_log_pb2.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE:
                    state = ev.outcome_reason.removeprefix(PREFIX)
                    router_changes.append(StateChange(ev.transaction_id, state, ev.event_id, r["id"]))
            else:
                billing_events[
                    billing_intake_pb2.RecordClaimDecisionRequest.FromString(r["payload"]).transaction_id
                ] += 1
        audit_changes = [
            StateChange(
                r["transaction_id"], r["outcome_reason"].removeprefix(PREFIX), r["event_id"], r["leaf_index"]
            )
            for r in await conn.fetch(
                "SELECT l.leaf_index, l.event_id, d.outcome_reason, d.transaction_id"
                " FROM audit.leaves l JOIN audit.entry_data d ON d.leaf_index = l.leaf_index"
                " WHERE d.kind = 'CLAIM_STATE_CHANGE' ORDER BY l.leaf_index"
            )
        ]
        ledger = Ledger(
            lines_sum=int(
                await conn.fetchval("SELECT coalesce(sum(amount_satang), 0) FROM billing.journal_lines")
            ),
            cached_sum=int(
                await conn.fetchval("SELECT coalesce(sum(balance_satang), 0) FROM billing.accounts")
            ),
            accounts_off=int(
                await conn.fetchval(
                    "SELECT count(*) FROM billing.accounts a WHERE a.balance_satang <> (SELECT coalesce("
                    "sum(l.amount_satang), 0) FROM billing.journal_lines l WHERE l.account_id = a.id)"
                )
            ),
            approvals={
                r["transaction_id"]: r["n"]
                for r in await conn.fetch(
                    "SELECT l.transaction_id, count(DISTINCT j.id) AS n FROM billing.journals j"
                    " JOIN billing.journal_lines l ON l.journal_id = j.id"
                    " WHERE j.kind = 'APPROVAL' AND l.transaction_id IS NOT NULL GROUP BY 1"
                )
            },
            intake={
                r["transaction_id"]: (r["state"], r["approved_satang"])
                for r in await conn.fetch("SELECT transaction_id, state, approved_satang FROM billing.claims")
            },
            payments={
                r["transaction_id"]: r["n"]
                for r in await conn.fetch(
                    "SELECT l.transaction_id, count(DISTINCT j.id) AS n FROM billing.journals j"
                    " JOIN billing.journal_lines l ON l.journal_id = j.id"
                    " WHERE j.kind = 'PAYMENT' AND l.transaction_id IS NOT NULL GROUP BY 1"
                )
            },
            settled={
                r["transaction_id"]: r["settled_satang"]
                for r in await conn.fetch(
                    "SELECT transaction_id, settled_satang FROM billing.claims WHERE settled_satang <> 0"
                )
            },
        )
        nonce_store_losses = int(await conn.fetchval("SELECT count(*) FROM gateway.nonce_store_losses"))
        taken_with_envelope = [
            r["transaction_id"]
            for r in await conn.fetch(
                "SELECT transaction_id FROM adapter.deliveries WHERE state = 'taken' AND envelope <> ''"
                " ORDER BY transaction_id"
            )
        ]
    finally:
        await conn.close()
    return Evidence(
        claims,
        router_changes,
        dict(billing_events),
        audit_changes,
        ledger,
        taken_with_envelope,
        nonce_store_losses,
    )


async def unsettled(database_url: str) -> dict[str, int]:
    """What the hub still has to do: claims not final, outbox events not relayed,
    PAID notices not delivered to the router. Empty when settled."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        counts = {
            "claims not final": await conn.fetchval(
                "SELECT count(*) FROM router.claims WHERE state IN (1, 2, 3)"
            ),
            "outbox events not relayed": await conn.fetchval(
                "SELECT count(*) FROM router.outbox WHERE sent_at IS NULL"
            ),
            "PAID notices not delivered": await conn.fetchval(
                "SELECT count(*) FROM billing.paid_outbox WHERE delivered_at IS NULL"
            ),
        }
    finally:
        await conn.close()
    return {k: int(v) for k, v in counts.items() if v}


def admitted_requests(access_log: Path) -> Counter[str]:
    """Request token -> lines of the gateway's access log that admitted it (a
    principal set by the auth service; a refused call has none)."""
    out: Counter[str] = Counter()
    if not access_log.exists():
        return out
    with open(access_log, "rb") as fh:
        for raw in fh:
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a line cut short by a SIGKILLed Envoy
            if isinstance(line, dict) and line.get("principal") and line.get("request"):
                out[str(line["request"])] += 1
    return out


def replay_tokens(master_key: str, replayed: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """Each replayed capture's request token, as the gateway computes it -> method."""
    key = pseudonym_key(b64url_decode(master_key))
    return {request_pseudonym(key, client, nonce): method for (client, nonce), method in replayed.items()}

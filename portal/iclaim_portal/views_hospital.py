"""The hospital's pages: new claim, claims with filters, a claim's timeline
(the hub's audit trail with what the portal observed; live by server-sent
events; a refresh link without JavaScript), its opened decision, cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from iclaim.client.hospital import DecisionVerificationError, HospitalClient
from iclaim.v1 import claim_service_pb2 as pb
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from iclaim_portal.claims import (
    CANCELLABLE_STATES,
    DECIDED_STATES,
    Envelopes,
    FILTER_STATES,
    FINAL_STATES,
    MAX_UPLOAD_BYTES,
    FormError,
    NewClaim,
    claim_from_form,
    claim_from_upload,
    decision_summary,
    new_claim_ref,
    state_name,
    state_value,
    when,
)
from iclaim_portal.context import not_found, portal_of, signed_in, staff_of
from iclaim_portal.billing import INSURER_CODE
from iclaim_portal.rpc import ABSENT, refusal_reason

log = logging.getLogger(__name__)
WATCH_TIMEOUT_S = 600.0


def envelopes(request: Request) -> Envelopes:
    """Who seals claims and opens decisions: the SDK client with the hospital's
    keys today (HospitalClient has both methods)."""
    return hospital(request)


def hospital(request: Request) -> HospitalClient:
    client = portal_of(request).hospital
    if client is None:  # the routes are mounted on hospital portals only
        raise RuntimeError("not a hospital portal")
    return client


@signed_in()
async def claims_page(request: Request) -> Response:
    portal = portal_of(request)
    state = request.query_params.get("state", "")
    insurer = request.query_params.get("insurer", "")
    filters: dict[str, object] = {}
    if state in FILTER_STATES:
        filters["state"] = state_value(state)
    if INSURER_CODE.fullmatch(insurer):  # another text, which the clearinghouse would refuse, filters nothing
        filters["insurer_code"] = insurer
    claims = await hospital(request).list_claims(**filters)
    claims.sort(key=lambda c: c.submitted_at.ToNanoseconds(), reverse=True)
    return portal.renderer.page(
        request,
        "claims.html",
        claims=[_row(c) for c in claims],
        states=FILTER_STATES,
        chosen_state=state,
        chosen_insurer=insurer,
        insurers=await _insurers(request),
    )


@signed_in(acting=True)
async def new_claim_page(request: Request) -> Response:
    return await _form(request, {"claim_ref": new_claim_ref()})


@signed_in(acting=True)
async def submit_claim(request: Request) -> Response:
    portal = portal_of(request)
    client = hospital(request)
    insurers = {i.code for i in await _insurers(request) if i.available}
    async with request.form(max_files=1, max_part_size=MAX_UPLOAD_BYTES + 1) as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("fhir_file")
        data = await upload.read(MAX_UPLOAD_BYTES + 1) if isinstance(upload, UploadFile) else b""
    try:
        claim = (
            claim_from_upload(data, client.creds.code, insurers)
            if data
            else claim_from_form(fields, client.creds.code, insurers)
        )
        submitted = await _submit(client, envelopes(request), claim)
    except (FormError, grpc.aio.AioRpcError) as err:
        return await _form(request, fields, error=refused(err), status_code=422)
    await portal.timeline.observe(submitted)
    await portal.staff.log(
        staff_of(request),
        "claim_submitted",
        submitted.transaction_id,
        insurer=claim.insurer_code,
        claim_ref=claim.claim_ref,
        amount_satang=claim.amount_satang,
    )
    return RedirectResponse(f"/claims/{submitted.transaction_id}", status_code=303)


async def _submit(client: HospitalClient, keys: Envelopes, claim: NewClaim) -> pb.Claim:
    envelope = await keys.seal_claim(
        claim.fhir,
        insurer_code=claim.insurer_code,
        claim_ref=claim.claim_ref,
        amount_satang=claim.amount_satang,
    )
    return await client.submit_claim(
        claim.fhir,
        insurer_code=claim.insurer_code,
        claim_ref=claim.claim_ref,
        amount_satang=claim.amount_satang,
        envelope=envelope,
    )


@signed_in()
async def claim_page(request: Request) -> Response:
    portal = portal_of(request)
    try:
        claim = await hospital(request).get_claim(request.path_params["tid"])
    except grpc.aio.AioRpcError as err:
        if err.code() in ABSENT:
            return not_found(request)
        raise
    await portal.timeline.observe(claim)
    return portal.renderer.page(request, "claim.html", **await _claim_view(request, claim))


@signed_in()
async def claim_events(request: Request) -> Response:
    """Server-sent events: the claim's status block, rendered anew at each state change."""
    portal = portal_of(request)
    client = hospital(request)
    tid = request.path_params["tid"]

    async def stream() -> AsyncIterator[str]:
        yield "retry: 5000\n\n"
        try:
            async for claim in client.watch_claim(tid, timeout_s=WATCH_TIMEOUT_S):
                await portal.timeline.observe(claim)
                html = portal.renderer.text(
                    request, "_claim_status.html", **await _claim_view(request, claim)
                )
                yield _sse("state", html)
                if state_name(claim) in FINAL_STATES:
                    break
        except (grpc.aio.AioRpcError, TimeoutError, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError):
                raise
            log.info("watch ended: %s", type(err).__name__)
        yield _sse("done", "")

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@signed_in(acting=True)
async def cancel_claim(request: Request) -> Response:
    portal = portal_of(request)
    tid = request.path_params["tid"]
    try:
        claim = await hospital(request).cancel_claim(tid, "cancelled in the portal")
    except grpc.aio.AioRpcError as err:
        if err.code() in ABSENT:
            return not_found(request)
        # refused (e.g. already decided): the claim as it is now, with the reason
        try:
            claim = await hospital(request).get_claim(tid)
        except grpc.aio.AioRpcError as lookup:
            if lookup.code() in ABSENT:
                return not_found(request)
            raise
        view = await _claim_view(request, claim)
        return portal.renderer.page(request, "claim.html", status_code=409, error=refused(err), **view)
    await portal.timeline.observe(claim)
    await portal.staff.log(staff_of(request), "claim_cancelled", tid)
    return RedirectResponse(f"/claims/{tid}", status_code=303)


def refused(err: FormError | grpc.aio.AioRpcError) -> FormError:
    """What a form shows: its own error, or the clearinghouse's refusal."""
    if isinstance(err, FormError):
        return err
    return FormError("form", "The clearinghouse refused:", refusal_reason(err))


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


def _row(claim: pb.Claim) -> dict[str, object]:
    return {
        "transaction_id": claim.transaction_id,
        "claim_ref": claim.claim_ref,
        "insurer_code": claim.insurer_code,
        "state": state_name(claim),
        "billed": claim.billed_amount_satang,
        "approved": claim.approved_amount_satang,
        "submitted_at": when(claim.submitted_at),
    }


async def _claim_view(request: Request, claim: pb.Claim) -> dict[str, Any]:
    portal = portal_of(request)
    state = state_name(claim)
    decision = None
    decision_error = False
    if claim.decision_envelope and state in DECIDED_STATES | {"PENDING_REVIEW"}:
        try:
            decision = decision_summary(envelopes(request).open_decision(claim))
        except (DecisionVerificationError, ValueError):
            decision_error = True
    history = await portal.timeline.of(claim.transaction_id)
    return {
        "claim": _row(claim) | {"reason": claim.status_reason, "decided_at": when(claim.decided_at)},
        "timeline": history.steps,
        "trail_read": history.trail_read,
        "decision": decision,
        "decision_error": decision_error,
        "final": state in FINAL_STATES,
        "cancellable": state in CANCELLABLE_STATES,
    }


async def _insurers(request: Request) -> list[pb.Insurer]:
    return sorted(await hospital(request).list_insurers(), key=lambda i: i.code)


async def _form(
    request: Request, values: dict[str, str], *, error: FormError | None = None, status_code: int = 200
) -> Response:
    portal = portal_of(request)
    return portal.renderer.page(
        request,
        "claim_new.html",
        status_code=status_code,
        values=values,
        error=error,
        insurers=[i for i in await _insurers(request) if i.available],
    )


ROUTES = [
    Route("/claims", claims_page, methods=["GET"]),
    Route("/claims/new", new_claim_page, methods=["GET"]),
    Route("/claims", submit_claim, methods=["POST"]),
    Route("/claims/{tid}", claim_page, methods=["GET"]),
    Route("/claims/{tid}/events", claim_events, methods=["GET"]),
    Route("/claims/{tid}/cancel", cancel_claim, methods=["POST"]),
]

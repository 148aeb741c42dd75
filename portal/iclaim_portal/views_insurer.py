"""The insurer's pages: the work queue, a claim opened for review, the decision."""

from __future__ import annotations

import grpc
from iclaim.client.insurer import InsurerClient
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.opening import InvalidDocument
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from iclaim_portal.claims import FormError
from iclaim_portal.context import form_values, not_found, portal_of, signed_in, staff_of
from iclaim_portal.insurer_queue import (
    DENY_REASONS,
    PARTIAL_REASONS,
    Queue,
    decision_from_form,
    opened,
    post_unless_cancelled,
    summary,
)
from iclaim_portal.views_hospital import refused


def _insurer(request: Request) -> tuple[InsurerClient, InsurerCredentials, Queue]:
    portal = portal_of(request)
    client = portal.insurer
    creds = portal.config.credentials
    if client is None or not isinstance(creds, InsurerCredentials):  # mounted on insurer portals only
        raise RuntimeError("not an insurer portal")
    return client, creds, Queue(portal.pool)


@signed_in()
async def queue_page(request: Request) -> Response:
    portal = portal_of(request)
    _, _, queue = _insurer(request)
    return portal.renderer.page(
        request, "queue.html", items=await queue.open_items(), decided=await queue.decided_items()
    )


async def _review(
    request: Request, values: dict[str, str], error: FormError | None = None, status_code: int = 200
) -> Response:
    portal = portal_of(request)
    _, creds, queue = _insurer(request)
    found = await queue.get(request.path_params["tid"])
    if found is None:
        return not_found(request)
    row, delivery = found
    incoming = opened(creds, delivery)
    await portal.staff.log(staff_of(request), "claim_opened", delivery.transaction_id)
    return portal.renderer.page(
        request,
        "review.html",
        status_code=status_code,
        item=row,
        claim=None if isinstance(incoming, InvalidDocument) else summary(incoming),
        problem=incoming.problem if isinstance(incoming, InvalidDocument) else "",
        deny_reasons=DENY_REASONS,
        partial_reasons=PARTIAL_REASONS,
        values=values,
        error=error,
    )


@signed_in()
async def review_page(request: Request) -> Response:
    return await _review(request, {})


@signed_in(acting=True)
async def decide(request: Request) -> Response:
    portal = portal_of(request)
    client, creds, queue = _insurer(request)
    found = await queue.get(request.path_params["tid"])
    if found is None:
        return not_found(request)
    row, delivery = found
    values = await form_values(request)
    if row["decided_at"] is not None:
        return await _review(request, values, FormError("form", "This claim is already decided."), 409)
    try:
        decision = decision_from_form(values, delivery.billed_amount_satang)
        posted = await post_unless_cancelled(client, creds, queue, delivery, decision)
    except (FormError, grpc.aio.AioRpcError) as err:
        return await _review(request, values, refused(err), 422)
    if not posted:  # the page now says the hospital cancelled it
        return await _review(request, values, status_code=409)
    staff = staff_of(request)
    await queue.decided(delivery.transaction_id, decision, staff.id)
    await portal.staff.log(
        staff,
        "claim_decided",
        delivery.transaction_id,
        state=decision.state,
        approved_satang=decision.approved_satang,
        reason=decision.reason_code,
    )
    return RedirectResponse("/queue", status_code=303)


ROUTES = [
    Route("/queue", queue_page, methods=["GET"]),
    Route("/queue/{tid}", review_page, methods=["GET"]),
    Route("/queue/{tid}/decide", decide, methods=["POST"]),
]

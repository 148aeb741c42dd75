"""Billing pages for both sides (§9): invoices (a hospital creates them from
approved claims and may void them; an insurer acknowledges them and posts
payments), and statements with a CSV download."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import grpc
from iclaim.v1 import billing_service_pb2 as bpb
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from iclaim_portal.billing import (
    CAS_GROUPS,
    PLB_CODES,
    invoice_status,
    is_counterparty,
    new_ref,
    payment_lines,
    pb_date,
    period_from,
    provider_adjustments,
    statement_csv,
)
from iclaim_portal.claims import FormError, state_value, when
from iclaim_portal.config import HOSPITAL
from iclaim_portal.context import form_values, not_found, portal_of, signed_in, staff_of
from iclaim_portal.formatting import BANGKOK
from iclaim_portal.rpc import ABSENT, is_reason, refusal_reason
from iclaim_portal.views_hospital import refused

INVOICEABLE = ("APPROVED", "PARTIALLY_APPROVED")


def _counterparty(request: Request) -> str:
    """The chosen counterparty, or "" for none or one the clearinghouse would refuse."""
    code = request.query_params.get("counterparty", "").strip()
    return code if is_counterparty(code, portal_of(request).config.side == HOSPITAL) else ""


async def _counterparties(request: Request) -> list[str]:
    portal = portal_of(request)
    if portal.hospital is not None:
        return sorted(i.code for i in await portal.hospital.list_insurers())
    rows = await portal.pool.fetch("SELECT DISTINCT hospital_code FROM queue ORDER BY 1")
    return [r[0] for r in rows]


def _invoice_row(invoice: bpb.Invoice) -> dict[str, object]:
    return {
        "invoice_id": invoice.invoice_id,
        "invoice_ref": invoice.invoice_ref,
        "hospital_code": invoice.hospital_code,
        "insurer_code": invoice.insurer_code,
        "claims": len(invoice.transaction_ids),
        "total": invoice.total_satang,
        "paid": invoice.paid_satang,
        "status": invoice_status(invoice),
        "submitted_at": when(invoice.submitted_at),
        "due_date": pb_date(invoice.due_date),
    }


@signed_in()
async def invoices_page(request: Request) -> Response:
    portal = portal_of(request)
    counterparty = _counterparty(request)
    invoices = await portal.billing.list_invoices(counterparty) if counterparty else []
    invoiceable: list[dict[str, object]] = []
    if counterparty and portal.hospital is not None:
        open_ids = {t for i in invoices if invoice_status(i) != "VOID" for t in i.transaction_ids}
        for state in INVOICEABLE:
            for claim in await portal.hospital.list_claims(
                state=state_value(state), insurer_code=counterparty
            ):
                if claim.transaction_id not in open_ids:
                    invoiceable.append(
                        {
                            "transaction_id": claim.transaction_id,
                            "claim_ref": claim.claim_ref,
                            "approved": claim.approved_amount_satang,
                        }
                    )
    return portal.renderer.page(
        request,
        "invoices.html",
        counterparty=counterparty,
        counterparties=await _counterparties(request),
        invoices=[_invoice_row(i) for i in invoices],
        invoiceable=invoiceable,
        error=error if is_reason(error := request.query_params.get("error", "")) else "",
    )


@signed_in(acting=True)
async def create_invoice(request: Request) -> Response:
    portal = portal_of(request)
    if portal.config.side != HOSPITAL:
        return Response(status_code=404)
    async with request.form() as form:
        insurer = str(form.get("insurer_code", ""))
        tids = [str(t) for t in form.getlist("transaction_id")]
    target = f"/invoices?counterparty={quote(insurer)}"
    if not tids:
        return RedirectResponse(target + "&error=NO_CLAIMS_CHOSEN", status_code=303)
    try:
        invoice = await portal.billing.create_invoice(new_ref("INV"), insurer, tids)
    except grpc.aio.AioRpcError as err:
        return RedirectResponse(target + "&error=" + refusal_reason(err), status_code=303)
    await portal.staff.log(
        staff_of(request), "invoice_created", invoice.invoice_id, claims=len(tids), total=invoice.total_satang
    )
    return RedirectResponse(target, status_code=303)


async def _invoice_action(request: Request, action: str) -> Response:
    portal = portal_of(request)
    invoice_id = request.path_params["invoice_id"]
    try:
        if action == "invoice_voided":
            invoice = await portal.billing.void_invoice(invoice_id, "voided in the portal")
        else:
            invoice = await portal.billing.acknowledge_invoice(invoice_id)
    except grpc.aio.AioRpcError as err:
        return RedirectResponse("/invoices?error=" + refusal_reason(err), status_code=303)
    await portal.staff.log(staff_of(request), action, invoice_id)
    counterparty = invoice.insurer_code if portal.config.side == HOSPITAL else invoice.hospital_code
    return RedirectResponse(f"/invoices?counterparty={counterparty}", status_code=303)


@signed_in(acting=True)
async def void_invoice(request: Request) -> Response:
    if portal_of(request).config.side != HOSPITAL:
        return Response(status_code=404)
    return await _invoice_action(request, "invoice_voided")


@signed_in(acting=True)
async def acknowledge_invoice(request: Request) -> Response:
    if portal_of(request).config.side == HOSPITAL:
        return Response(status_code=404)
    return await _invoice_action(request, "invoice_acknowledged")


async def _payment_form(
    request: Request, values: dict[str, str], error: FormError | None = None, status_code: int = 200
) -> Response:
    portal = portal_of(request)
    invoice = await _invoice(request)
    if invoice is None:
        return not_found(request)
    known = {
        r["transaction_id"]: r
        for r in await portal.pool.fetch(
            "SELECT transaction_id, claim_ref, approved_satang FROM queue WHERE transaction_id = ANY($1)",
            list(invoice.transaction_ids),
        )
    }
    return portal.renderer.page(
        request,
        "payment_new.html",
        status_code=status_code,
        invoice=_invoice_row(invoice),
        lines=[
            {
                "transaction_id": c.transaction_id,
                "known": known.get(c.transaction_id),
                "due": c.approved_satang - c.settled_satang,
            }
            for c in invoice.claims
        ],
        groups=CAS_GROUPS,
        plb_codes=PLB_CODES,
        values=values,
        error=error,
        trace_no=values.get("trace_no") or new_ref("TRACE"),
    )


@signed_in(acting=True)
async def payment_page(request: Request) -> Response:
    if portal_of(request).config.side == HOSPITAL:
        return Response(status_code=404)
    return await _payment_form(request, {})


@signed_in(acting=True)
async def post_payment(request: Request) -> Response:
    portal = portal_of(request)
    if portal.config.side == HOSPITAL:
        return Response(status_code=404)
    invoice = await _invoice(request)
    if invoice is None:
        return not_found(request)
    values = await form_values(request)
    try:
        lines = payment_lines(values, list(invoice.transaction_ids))
        adjustments = provider_adjustments(values)
        payment = await portal.billing.post_payment(
            values.get("trace_no", "").strip() or new_ref("TRACE"), datetime.now(UTC), lines, adjustments
        )
    except (FormError, grpc.aio.AioRpcError) as err:
        return await _payment_form(request, values, refused(err), 422)
    await portal.staff.log(
        staff_of(request),
        "payment_posted",
        payment.payment_id,
        trace_no=payment.trace_no,
        total=payment.total_satang,
    )
    return RedirectResponse(f"/invoices?counterparty={invoice.hospital_code}", status_code=303)


async def _invoice(request: Request) -> bpb.Invoice | None:
    """The invoice the URL names; None when the clearinghouse knows none by that id."""
    try:
        return await portal_of(request).billing.get_invoice(request.path_params["invoice_id"])
    except grpc.aio.AioRpcError as err:
        if err.code() in ABSENT:
            return None
        raise


@signed_in()
async def statement_page(request: Request) -> Response:
    portal = portal_of(request)
    counterparty = _counterparty(request)
    today = datetime.now(BANGKOK).date()
    q = request.query_params
    statement = None
    error = None
    try:
        period = period_from(q.get("start", ""), q.get("end", ""), today)
    except FormError as err:
        error, period = err, period_from("", "", today)
    if counterparty and error is None:
        try:
            statement = await portal.billing.statement(counterparty, period.start, period.end)
        except grpc.aio.AioRpcError as err:
            # checked here first, so a refusal is unexpected: still the form's, not a 500
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            error = refused(err)
    if statement is not None and q.get("format") == "csv":
        name = f"statement-{counterparty}-{period.start:%Y%m%d}-{period.end:%Y%m%d}.csv"
        return Response(
            statement_csv(statement),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return portal.renderer.page(
        request,
        "statement.html",
        status_code=422 if error else 200,
        counterparty=counterparty,
        counterparties=await _counterparties(request),
        period=period,
        statement=statement,
        lines=[
            {
                "occurred_at": when(line.occurred_at),
                "kind": line.kind,
                "reference": line.reference,
                "description": line.description,
                "amount": line.amount_satang,
                "balance": line.running_balance_satang,
            }
            for line in (statement.lines if statement else [])
        ],
        error=error,
    )


ROUTES = [
    Route("/invoices", invoices_page, methods=["GET"]),
    Route("/invoices", create_invoice, methods=["POST"]),
    Route("/invoices/{invoice_id}/void", void_invoice, methods=["POST"]),
    Route("/invoices/{invoice_id}/acknowledge", acknowledge_invoice, methods=["POST"]),
    Route("/invoices/{invoice_id}/pay", payment_page, methods=["GET"]),
    Route("/invoices/{invoice_id}/pay", post_payment, methods=["POST"]),
    Route("/statement", statement_page, methods=["GET"]),
]

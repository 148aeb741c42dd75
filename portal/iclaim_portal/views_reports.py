"""Reports: the participant's claims per month and counterparty, charted and as CSV."""

from __future__ import annotations

from collections.abc import Iterable

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iclaim.v1 import billing_service_pb2 as bpb
from iclaim_portal.billing import invoice_status
from iclaim_portal.claims import state_name, when
from iclaim_portal.context import Portal, portal_of, signed_in
from iclaim_portal.render import locale_of
from iclaim_portal.formatting import local_month
from iclaim_portal.i18n import translations
from iclaim_portal.reports import OUTCOMES, ClaimFact, amounts_chart, outcomes_chart, summarise, to_csv


def _claim_amounts(invoices: Iterable[bpb.Invoice]) -> dict[str, bpb.InvoiceClaim]:
    """Each claim's paid and settled amounts, from the invoices that billed it
    (a void invoice carries none)."""
    return {
        c.transaction_id: c
        for invoice in invoices
        if invoice_status(invoice) != "VOID"
        for c in invoice.claims
    }


async def _hospital_facts(portal: Portal) -> list[ClaimFact]:
    if portal.hospital is None:
        raise RuntimeError("not a hospital portal")
    amounts = _claim_amounts(await portal.billing.list_invoices(""))
    facts = []
    for claim in await portal.hospital.list_claims():
        submitted = when(claim.submitted_at)
        if submitted is None:
            continue
        state = state_name(claim)
        billed = amounts.get(claim.transaction_id)
        facts.append(
            ClaimFact(
                claim.insurer_code,
                state,
                claim.billed_amount_satang,
                claim.approved_amount_satang,
                submitted,
                when(claim.decided_at),
                paid_satang=0 if billed is None else billed.paid_satang,
                # PAID means nothing is left due, even if paid without an invoice.
                settled_satang=claim.approved_amount_satang
                if state == "PAID"
                else (0 if billed is None else billed.settled_satang),
            )
        )
    return facts


async def _insurer_facts(portal: Portal) -> list[ClaimFact]:
    rows = await portal.pool.fetch(
        "SELECT transaction_id, hospital_code, state, billed_satang, approved_satang, taken_at, decided_at"
        " FROM queue"
    )
    invoices = [
        i for h in sorted({r["hospital_code"] for r in rows}) for i in await portal.billing.list_invoices(h)
    ]
    amounts = _claim_amounts(invoices)
    none = bpb.InvoiceClaim()
    return [
        ClaimFact(
            r["hospital_code"],
            r["state"],
            r["billed_satang"],
            r["approved_satang"],
            r["taken_at"],
            r["decided_at"],
            paid_satang=amounts.get(r["transaction_id"], none).paid_satang,
            settled_satang=amounts.get(r["transaction_id"], none).settled_satang,
        )
        for r in rows
    ]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@signed_in()
async def report_page(request: Request) -> Response:
    portal = portal_of(request)
    facts = await (_hospital_facts(portal) if portal.hospital is not None else _insurer_facts(portal))
    counterparty = request.query_params.get("counterparty", "")
    if counterparty:
        facts = [f for f in facts if f.counterparty == counterparty]
    rows = summarise(facts)
    if request.query_params.get("format") == "csv":
        return Response(
            to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="claims-report.csv"'},
        )
    locale = locale_of(request)
    t = translations(locale).gettext

    def month(value: str) -> str:
        return local_month(value, locale)

    labels = {o: t(o) for o in OUTCOMES} | {
        "billed": t("Billed"),
        "approved": t("Approved"),
        "paid": t("Paid"),
    }
    return portal.renderer.page(
        request,
        "report.html",
        rows=rows,
        outcomes=OUTCOMES,
        counterparty=counterparty,
        counterparties=sorted({f.counterparty for f in facts}),
        outcomes_svg=Markup(outcomes_chart(rows, t("Claims by outcome per month"), labels, month)),
        amounts_svg=Markup(amounts_chart(rows, t("Amounts per month"), labels, month)),
        duration=duration,
    )


ROUTES = [Route("/reports", report_page, methods=["GET"])]

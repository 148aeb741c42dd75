"""Billing metrics: invoices by status, outstanding and overdue per insurer,
days-to-pay. Gauges are refreshed from the store; the histogram is observed
when a payment completes an invoice."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.billing.views import MetricsSnapshot

INVOICES = Gauge("iclaim_billing_invoices", "Invoices by status.", ["status"])
OUTSTANDING = Gauge(
    "iclaim_billing_outstanding_satang",
    "What each insurer owes (approved, unsettled, net of overpayments), satang.",
    ["insurer"],
)
OVERDUE = Gauge("iclaim_billing_overdue_satang", "Unpaid amount on overdue invoices, satang.", ["insurer"])
DAYS_TO_PAY = Histogram(
    "iclaim_billing_days_to_pay",
    "Days from invoice submission to the payment that settled it.",
    ["insurer"],
    buckets=(1, 3, 7, 15, 30, 45, 60, 90, 120, 180, 365),
)
PAYMENTS = Counter("iclaim_billing_payments_total", "Payments recorded (replays excluded).", ["insurer"])
PAYMENT_LINES = Counter("iclaim_billing_payment_lines_total", "Payment lines recorded.", ["insurer"])
DECISIONS_READ_THROUGH = Counter(
    "iclaim_billing_decisions_read_through_total",
    "Claim decisions read from the claim router because an invoice or a payment named them"
    " before the router's outbox delivered them.",
)
PAID_NOTICES = Counter(
    "iclaim_billing_paid_notices_total", "MarkClaimPaid deliveries, by outcome.", ["outcome"]
)

_STATUSES = ("SUBMITTED", "ACKNOWLEDGED", "PARTIALLY_PAID", "PAID", "OVERDUE", "VOID")


def publish(snapshot: MetricsSnapshot) -> None:
    for st in _STATUSES:
        INVOICES.labels(st).set(snapshot.invoices_by_status.get(st, 0))
    for insurer, owed in snapshot.outstanding_by_insurer.items():
        OUTSTANDING.labels(insurer).set(owed)
    for insurer in snapshot.outstanding_by_insurer:
        OVERDUE.labels(insurer).set(snapshot.overdue_by_insurer.get(insurer, 0))

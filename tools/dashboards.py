"""Grafana dashboards as code: `python tools/dashboards.py` writes
deploy/monitoring/dashboards/*.json (committed; tests/unit/test_monitoring.py
regenerates them and compares, and parses every query with promtool).

Built with grafana-foundation-sdk (Grafana's own builders, generated from its
schemas). Queries name only metrics our services export (checked by the test)
and Envoy's own stats (the gateway's stats listener)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parents[1] / "deploy" / "monitoring" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: Sequence[Query]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | table
    width: int = 12


def _panel(p: Panel) -> timeseries.Panel | stat.Panel | table.Panel:
    builder: timeseries.Panel | stat.Panel | table.Panel
    if p.kind == "stat":
        builder = stat.Panel()
    elif p.kind == "table":
        builder = table.Panel()
    else:
        builder = timeseries.Panel()
    builder.title(p.title).unit(p.unit).datasource(DATASOURCE).span(p.width).height(8)
    for ref, q in zip("ABCDEFGH", p.queries, strict=False):
        target = prometheus.Dataquery().expr(q.expr).ref_id(ref).legend_format(q.legend or "__auto")
        if p.kind in ("stat", "table"):
            target = target.instant()
        builder.with_target(target)
    return builder


def build(uid: str, title: str, rows: Sequence[tuple[str, Sequence[Panel]]]) -> dict[str, object]:
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .tags(["iclaim"])
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for row_title, panels in rows:
        board.with_row(dash.Row(row_title))
        for p in panels:
            board.with_panel(_panel(p))
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder, sort_keys=True))
    return encoded


def _rate(metric: str, by: str, window: str = "5m", where: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{where}}}[{window}]))"


def _quantile(q: float, histogram: str, by: str = "le", where: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket{{{where}}}[5m])))"


def _total(gauge: str, by: str) -> str:
    """A database-wide total every replica publishes alike: max, as sum would
    count it once per replica."""
    return f"max by ({by}) ({gauge})"


def _latency(title: str, histogram: str, unit: str = "s", where: str = "") -> Panel:
    """The median and the tail of one latency histogram."""
    return Panel(
        title,
        [Query(_quantile(q, histogram, where=where), f"p{round(q * 100)}") for q in (0.5, 0.99)],
        unit,
    )


OVERVIEW = build(
    "iclaim-overview",
    "iClaim — overview",
    [
        (
            "Claims",
            [
                Panel(
                    "Claims in (per second)",
                    [Query(_rate("iclaim_claims_total", "state", where='state="RECEIVED"'), "received")],
                    "reqps",
                ),
                Panel(
                    "Decisions by outcome",
                    [
                        Query(
                            _rate(
                                "iclaim_claims_total",
                                "state",
                                where='state=~"APPROVED|PARTIALLY_APPROVED|DENIED|FAILED|PENDING_REVIEW"',
                            ),
                            "{{state}}",
                        )
                    ],
                    "reqps",
                ),
                _latency("SubmitClaim latency to the claim stored (SLO)", "iclaim_claim_submit_seconds"),
                _latency("Submit → decision latency", "iclaim_claim_decision_seconds"),
                Panel(
                    "Public API errors by code",
                    [
                        Query(
                            _rate(
                                "grpc_server_handled_total",
                                "grpc_code",
                                where='grpc_service=~"iclaim\\\\.v1\\\\..+",grpc_code!="OK"',
                            ),
                            "{{grpc_code}}",
                        )
                    ],
                    "reqps",
                ),
            ],
        ),
        (
            "Insurers",
            [
                Panel(
                    "Insurer health (0 unknown, 1 healthy, 2 degraded, 3 down)",
                    [Query("max by (insurer) (iclaim_delivery_circuit_state)", "{{insurer}}")],
                    kind="table",
                ),
                Panel(
                    "Delivery backlog by insurer",
                    [
                        Query(_total("iclaim_delivery_backlog", "insurer"), "{{insurer}}"),
                        Query(
                            "max by (insurer) (iclaim_delivery_backlog_oldest_seconds)", "oldest {{insurer}}"
                        ),
                    ],
                ),
                Panel(
                    "Pushes by outcome",
                    [Query(_rate("iclaim_delivery_pushes_total", "outcome"), "{{outcome}}")],
                    "reqps",
                ),
                Panel(
                    "Decisions answered in pushes (§10.6) by outcome",
                    [Query(_rate("iclaim_delivery_push_answers_total", "outcome"), "{{outcome}}")],
                    "reqps",
                ),
                Panel(
                    "Push latency p99 by insurer",
                    [
                        Query(
                            _quantile(0.99, "iclaim_delivery_attempt_seconds", by="le, insurer"),
                            "{{insurer}}",
                        )
                    ],
                    "s",
                ),
            ],
        ),
        (
            "Participation",
            [
                Panel(
                    "Hospitals registered vs live (submitted in the last 30 days)",
                    [
                        Query("max(iclaim_participants_hospitals_registered)", "registered"),
                        Query("max(iclaim_participants_hospitals_live)", "live"),
                    ],
                    kind="stat",
                ),
                Panel(
                    "Insurers connected",
                    [Query("max(iclaim_participants_insurers_connected)", "connected")],
                    kind="stat",
                ),
            ],
        ),
    ],
)

GATEWAY = build(
    "iclaim-gateway",
    "iClaim — gateway",
    [
        (
            "Auth",
            [
                Panel(
                    "Authz decisions by reason",
                    [
                        Query(
                            _rate("iclaim_authz_decisions_total", "outcome, reason"), "{{outcome}} {{reason}}"
                        )
                    ],
                    "reqps",
                ),
                _latency("Authz check latency", "iclaim_authz_check_duration_seconds"),
            ],
        ),
        (
            "Envoy",
            [
                Panel(
                    "Requests by response class",
                    [
                        Query(
                            _rate(
                                "envoy_http_downstream_rq_xx",
                                "envoy_response_code_class",
                                where='envoy_http_conn_manager_prefix="ingress"',
                            ),
                            "{{envoy_response_code_class}}xx",
                        )
                    ],
                    "reqps",
                ),
                _latency(
                    "Request latency",
                    "envoy_http_downstream_rq_time",
                    "ms",
                    where='envoy_http_conn_manager_prefix="ingress"',
                ),
                Panel(
                    "Upstream requests by cluster",
                    [
                        Query(
                            # envoy_admin: the stats listener's own scrapes.
                            _rate(
                                "envoy_cluster_upstream_rq_total",
                                "envoy_cluster_name",
                                where='envoy_cluster_name!="envoy_admin"',
                            ),
                            "{{envoy_cluster_name}}",
                        )
                    ],
                    "reqps",
                ),
                Panel(
                    "Calls by method",
                    [
                        Query(
                            # grpc_stats, public methods only (gateway/envoy.py labels them).
                            _rate("envoy_cluster_grpc_total", "grpc_method", where='grpc_method!=""'),
                            "{{grpc_method}}",
                        )
                    ],
                    "reqps",
                ),
                Panel(
                    "Downstream connections",
                    [
                        Query(
                            'sum(envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="ingress"})',
                            "active",
                        )
                    ],
                ),
            ],
        ),
    ],
)

AUDIT = build(
    "iclaim-audit",
    "iClaim — audit log",
    [
        (
            "Log",
            [
                Panel(
                    "Entries appended by source",
                    [Query(_rate("iclaim_audit_entries_appended_total", "source"), "{{source}}")],
                    "reqps",
                ),
                Panel("Append latency", [Query(_quantile(0.99, "iclaim_audit_append_seconds"), "p99")], "s"),
                Panel(
                    "Tree size vs checkpointed",
                    [
                        Query("max(iclaim_audit_tree_size)", "tree"),
                        Query("max(iclaim_audit_checkpoint_tree_size)", "checkpoint"),
                    ],
                ),
                Panel("Checkpoint age", [Query("max(iclaim_audit_checkpoint_age_seconds)", "age")], "s"),
                Panel(
                    "Shipper lag by pod",
                    [Query("max by (pod) (iclaim_shipper_lag_bytes)", "{{pod}}")],
                    "bytes",
                ),
                Panel(
                    "Expired entries",
                    [Query("sum(increase(iclaim_audit_entries_expired_total[1d]))", "per day")],
                ),
            ],
        )
    ],
)

BILLING = build(
    "iclaim-billing",
    "iClaim — billing",
    [
        (
            "Money",
            [
                Panel(
                    "Outstanding by insurer (THB)",
                    [Query(_total("iclaim_billing_outstanding_satang", "insurer") + " / 100", "{{insurer}}")],
                    "currencyTHB",
                ),
                Panel(
                    "Overdue by insurer (THB)",
                    [Query(_total("iclaim_billing_overdue_satang", "insurer") + " / 100", "{{insurer}}")],
                    "currencyTHB",
                ),
                Panel(
                    "Invoices by status",
                    [Query(_total("iclaim_billing_invoices", "status"), "{{status}}")],
                    kind="table",
                ),
                Panel(
                    "Payments per hour by insurer",
                    [Query("sum by (insurer) (increase(iclaim_billing_payments_total[1h]))", "{{insurer}}")],
                ),
                Panel(
                    "Days to pay p50 by insurer",
                    [Query(_quantile(0.5, "iclaim_billing_days_to_pay", by="le, insurer"), "{{insurer}}")],
                    "d",
                ),
            ],
        )
    ],
)

DASHBOARDS = {"overview": OVERVIEW, "gateway": GATEWAY, "audit": AUDIT, "billing": BILLING}


def rendered() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(board, indent=2, sort_keys=True) + "\n"
        for name, board in DASHBOARDS.items()
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
    sys.stdout.write(f"wrote {len(DASHBOARDS)} dashboards to {OUT}\n")


if __name__ == "__main__":
    main()

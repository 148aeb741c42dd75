"""A claim's timeline: the hub's audit trail (its state changes at the hub's
times) merged with what the portal observed that the trail lacks; only the
portal's observations, said so on the page, when the trail cannot be read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from iclaim.audit.entry import AuditEntry
from iclaim.audit.trail import TrailItem
from iclaim_portal import claims
from iclaim_portal.claims import History, Step, Timeline, merge_timeline, trail_steps
from iclaim_portal.i18n import environments

TID = "txn_" + "a" * 28
T0 = datetime(2026, 11, 27, 1, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def entry(state: str, when: datetime, *, kind: str = "CLAIM_STATE_CHANGE", tid: str = TID) -> AuditEntry:
    return AuditEntry(
        event_id=f"router-{state}-{us(when)}",
        kind=kind,
        origin_principal="10670",
        source_address="",
        destination="AIA",
        route="/iclaim.v1.ClaimService/SubmitClaim",
        occurred_at_us=us(when),
        size_bytes=0,
        duration_ms=0,
        service_type="claim_router",
        outcome_code="OK",
        outcome_reason=f"CLAIM_STATE_{state}",
        transaction_id=tid,
        envelope_sha256="",
    )


def item(index: int, e: AuditEntry | None, event_id: str = "") -> TrailItem:
    return TrailItem(index, b"\x00" * 32, event_id or (e.event_id if e else f"gone-{index}"), e)


def states(history: History) -> list[tuple[str, datetime, bool]]:
    return [(s.state, s.at, s.from_trail) for s in history.steps]


def test_the_trail_gives_the_state_changes_at_the_hubs_times_and_nothing_else() -> None:
    received = entry("RECEIVED", at(0))
    items = [
        item(0, received),
        item(1, replace(entry("RECEIVED", at(0.1)), kind="GATEWAY_CALL")),  # a call, not a change
        item(2, None),  # expired: no data left
        item(3, entry("DELIVERED", at(1), tid="txn_" + "b" * 28)),  # another claim
        item(4, replace(entry("DELIVERED", at(2)), outcome_reason="SOMETHING_ELSE")),
        item(5, entry("DELIVERED", at(3))),
        item(6, received),  # the same event again
        item(7, entry("APPROVED", at(9))),
    ]
    steps = trail_steps(items, TID)
    assert [(s.state, s.at) for s in steps] == [
        ("RECEIVED", at(0)),
        ("DELIVERED", at(3)),
        ("APPROVED", at(9)),
    ]
    assert steps[0].at.microsecond == 123456  # exact, not through a float
    assert all(s.from_trail for s in steps)


def test_a_claim_decided_while_nobody_watched_shows_every_state_at_the_hubs_time() -> None:
    trail = [Step("RECEIVED", at(0), True), Step("DELIVERED", at(1), True), Step("APPROVED", at(10), True)]
    # the portal saw RECEIVED on submit and APPROVED a day later, on a page view
    observed = [("RECEIVED", at(0.2)), ("APPROVED", at(86_400))]
    history = merge_timeline(trail, observed)
    assert history.trail_read
    assert states(history) == [
        ("RECEIVED", at(0), True),
        ("DELIVERED", at(1), True),
        ("APPROVED", at(10), True),
    ]


def test_what_the_trail_does_not_have_yet_comes_from_the_portal_in_time_order() -> None:
    trail = [Step("DELIVERED", at(1), True), Step("RECEIVED", at(0), True)]
    observed = [("RECEIVED", at(0.3)), ("PENDING_REVIEW", at(2.5)), ("APPROVED", at(5))]
    assert states(merge_timeline(trail, observed)) == [
        ("RECEIVED", at(0), True),
        ("DELIVERED", at(1), True),
        ("PENDING_REVIEW", at(2.5), False),
        ("APPROVED", at(5), False),
    ]


def test_a_state_the_trail_has_is_not_shown_again_at_the_portals_later_time() -> None:
    trail = [
        Step("RECEIVED", at(0), True),
        Step("DELIVERED", at(1), True),
        Step("PENDING_REVIEW", at(2), True),
    ]
    # the page was opened after the review had begun, but it still saw DELIVERED first
    observed = [("RECEIVED", at(0.2)), ("DELIVERED", at(2.5)), ("PENDING_REVIEW", at(3))]
    assert [s.state for s in merge_timeline(trail, observed).steps] == [
        "RECEIVED",
        "DELIVERED",
        "PENDING_REVIEW",
    ]


def test_a_state_is_never_shown_twice_but_a_redriven_claim_keeps_its_path() -> None:
    trail = [
        Step("RECEIVED", at(0), True),
        Step("RECEIVED", at(0), True),  # the same change twice in a row: once
        Step("FAILED", at(100), True),
        Step("RECEIVED", at(200), True),  # redriven: entered again, as the log says
    ]
    observed = [("RECEIVED", at(1)), ("FAILED", at(101))]
    assert [s.state for s in merge_timeline(trail, observed).steps] == ["RECEIVED", "FAILED", "RECEIVED"]


def test_without_the_trail_the_portals_observations_are_shown_and_flagged() -> None:
    observed = [("APPROVED", at(5)), ("RECEIVED", at(0))]
    history = merge_timeline(None, observed)
    assert not history.trail_read
    assert states(history) == [("RECEIVED", at(0), False), ("APPROVED", at(5), False)]
    assert merge_timeline([], observed).trail_read  # an empty trail is still a trail


class FakePool:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, query: str, *args: object) -> list[dict[str, Any]]:
        return self.rows


class FakeTrail:
    def __init__(self, items: Sequence[TrailItem] = (), error: BaseException | None = None) -> None:
        self.items = items
        self.error = error
        self.asked: list[str] = []

    async def by_transaction(self, transaction_id: str) -> Sequence[TrailItem]:
        self.asked.append(transaction_id)
        if self.error is not None:
            raise self.error
        return self.items


OBSERVED_ROWS = [{"state": "RECEIVED", "observed_at": at(0.2)}, {"state": "APPROVED", "observed_at": at(60)}]


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "upstream connect error"
    )


async def test_the_timeline_reads_the_claims_trail() -> None:
    trail = FakeTrail([item(0, entry("RECEIVED", at(0))), item(1, entry("APPROVED", at(9)))])
    history = await Timeline(FakePool(OBSERVED_ROWS), trail).of(TID)  # type: ignore[arg-type]
    assert trail.asked == [TID]
    assert states(history) == [("RECEIVED", at(0), True), ("APPROVED", at(9), True)]


@pytest.mark.parametrize("trail", [FakeTrail(error=unavailable()), None])
async def test_an_unreadable_trail_falls_back_to_what_the_portal_observed(trail: FakeTrail | None) -> None:
    history = await Timeline(FakePool(OBSERVED_ROWS), trail).of(TID)  # type: ignore[arg-type]
    assert not history.trail_read
    assert states(history) == [("RECEIVED", at(0.2), False), ("APPROVED", at(60), False)]


async def test_a_trail_that_does_not_answer_in_time_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    class Hanging(FakeTrail):
        async def by_transaction(self, transaction_id: str) -> Sequence[TrailItem]:
            await asyncio.sleep(60)
            return []

    monkeypatch.setattr(claims, "TRAIL_TIMEOUT_S", 0.05)
    history = await Timeline(FakePool(OBSERVED_ROWS), Hanging()).of(TID)  # type: ignore[arg-type]
    assert not history.trail_read and [s.state for s in history.steps] == ["RECEIVED", "APPROVED"]


def render_status(locale: str, history: History) -> str:
    claim = {"state": "APPROVED", "reason": "", "decided_at": None, "approved": 0, "transaction_id": TID}
    template = environments()[locale].get_template("_claim_status.html")
    return template.render(claim=claim, timeline=history.steps, trail_read=history.trail_read)


def test_the_page_says_discreetly_when_the_timeline_is_the_portals_own() -> None:
    fallback = merge_timeline(None, [("RECEIVED", at(0))])
    th = render_status("th", fallback)
    assert 'id="timeline-note"' in th and "อ่านบันทึกการตรวจสอบของศูนย์กลางไม่ได้" in th
    assert "2569" in th  # Buddhist era on Thai pages
    en = render_status("en", fallback)
    assert "audit log could not be read" in en and "2026" in en
    read = render_status("th", merge_timeline([Step("RECEIVED", at(0), True)], [("RECEIVED", at(1))]))
    assert "timeline-note" not in read
    assert read.count('data-state="RECEIVED"') == 1 and 'data-source="trail"' in read
    assert f'datetime="{at(0).isoformat()}"' in read

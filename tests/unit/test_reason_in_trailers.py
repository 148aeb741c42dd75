"""iclaim.errors.reason_in_trailers: the ErrorInfo reason a peer's status
trailer carries, shared by the hub's adapter and the insurer kit."""

from __future__ import annotations

from iclaim.errors import Code, build_status, reason_in_trailers


def test_the_reason_of_a_rich_status() -> None:
    trailer = build_status(Code.FAILED_PRECONDITION, "no", "DECISION_CONFLICT").SerializeToString()
    assert reason_in_trailers((("x-other", "1"), ("grpc-status-details-bin", trailer))) == "DECISION_CONFLICT"


def test_no_trailer_a_bare_status_or_a_garbled_one_is_no_reason() -> None:
    assert reason_in_trailers(None) == ""
    assert reason_in_trailers((("x-other", "1"),)) == ""
    bare = build_status(Code.UNAVAILABLE, "down", "").SerializeToString()
    assert reason_in_trailers((("grpc-status-details-bin", bare),)) == ""
    assert reason_in_trailers((("grpc-status-details-bin", b"\xff\x00not a status"),)) == ""

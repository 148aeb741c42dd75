"""The gRPC frame the signature covers (PROTOCOL.md §3: message bytes without
the 5-byte prefix, uncompressed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.authz.frame import MAX_MESSAGE_BYTES, message_bytes
from iclaim.errors import InvalidArgument, ResourceExhausted


def framed(msg: bytes, flag: int = 0, length: int | None = None) -> bytes:
    n = len(msg) if length is None else length
    return bytes([flag]) + n.to_bytes(4, "big") + msg


@given(st.binary(max_size=4096))
def test_one_uncompressed_frame_yields_its_message(msg: bytes) -> None:
    assert message_bytes(framed(msg), partial=False) == msg


def test_empty_message_is_a_valid_frame() -> None:
    assert message_bytes(framed(b""), partial=False) == b""


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="no-body"),
        pytest.param(b"\x00\x00\x00", id="short-prefix"),
        pytest.param(framed(b"abc", flag=1), id="compressed"),
        pytest.param(framed(b"abc", flag=2), id="bad-flag"),
        pytest.param(framed(b"abc", length=4), id="length-longer-than-body"),
        pytest.param(framed(b"abc", length=2), id="length-shorter-than-body"),
        pytest.param(framed(b"abc") + framed(b"def"), id="two-frames"),
    ],
)
def test_malformed_frames_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgument) as exc:
        message_bytes(raw, partial=False)
    assert exc.value.reason == "MALFORMED_REQUEST"


def test_partial_body_is_too_large() -> None:
    with pytest.raises(ResourceExhausted) as exc:
        message_bytes(framed(b"abc"), partial=True)
    assert exc.value.reason == "REQUEST_TOO_LARGE"


def test_length_prefix_over_the_limit_is_too_large_even_if_truncated() -> None:
    raw = framed(b"x" * 10, length=MAX_MESSAGE_BYTES + 1)
    with pytest.raises(ResourceExhausted) as exc:
        message_bytes(raw, partial=False)
    assert exc.value.reason == "REQUEST_TOO_LARGE"
    assert message_bytes(framed(b"x" * 100), partial=False, max_message_bytes=100) == b"x" * 100
    with pytest.raises(ResourceExhausted):
        message_bytes(framed(b"x" * 101), partial=False, max_message_bytes=100)
